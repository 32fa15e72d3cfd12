//! The SAM step kind (with m-sharpness and adaptive SAM as SAM's settings
//! say): two passes and an update ([`sam_step_with`]).

use candle_core::Tensor;
use samlab_models::Model;

use super::{
    GhostForm, Method, NoSettings, StepCtx, StepKind, StepOutput, StepSettings, sam_output,
};
use crate::batched;
use crate::error::Result;
use crate::sam::{SamConfig, perturbation};
use crate::sgd::Sgd;

#[derive(Debug, Default)]
pub struct SamKind;

impl StepKind for SamKind {
    type Settings = NoSettings;
    const USES_SAM: bool = true;
    const BATCHED: bool = true;

    fn cost(_: &NoSettings) -> f64 {
        2.0
    }

    fn step(&mut self, _: &NoSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        if c.ghost == GhostForm::Batched {
            return batched_sam_step(c.model, c.opt, &c.settings(), c.x, c.y, c.lr);
        }
        let sam = c.sam;
        let (out, ()) = c.sam_update(
            Method::Sam,
            |params, g| perturbation(params, g, sam),
            |_, g2| Ok((g2, None)),
            |_| Ok(()),
        )?;
        Ok(out)
    }
}

/// [`sam_step_with`] in the batched form ([`crate::batched`]), whatever
/// `settings.ghost` says: two passes over the batch, BatchNorm per slice
/// of `settings.bn_batch` images and each chunk's perturbation per slice.
pub fn batched_sam_step(
    model: &Model,
    opt: &mut Sgd,
    settings: &StepSettings,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    let r = batched::sam(model, opt, settings.sam, settings.bn_batch, x, y, lr)?;
    Ok(sam_output(Method::Sam, &r, y.dim(0)?))
}

/// One SAM step (see the module docs).
pub fn sam_step(
    model: &Model,
    opt: &mut Sgd,
    cfg: &SamConfig,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    sam_step_with(model, opt, &StepSettings::sequential(cfg, None), x, y, lr)
}

/// [`sam_step`] with the settings every step kind takes: SAM's and the
/// ghost batches, one pass each or batched as `settings.ghost` says
/// ([`batched_sam_step`]) (module docs). The SAM step kind.
pub fn sam_step_with(
    model: &Model,
    opt: &mut Sgd,
    settings: &StepSettings,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    let c = StepCtx {
        model,
        opt,
        sam: settings.sam,
        bn_batch: settings.bn_batch,
        ghost: settings.ghost,
        x,
        y,
        lr,
    };
    SamKind.step(&NoSettings {}, c)
}
