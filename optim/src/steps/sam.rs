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
        let StepSettings {
            sam,
            bn_batch,
            ghost,
        } = c.settings;
        if ghost == GhostForm::Batched {
            let r = batched::sam(c.model, c.opt, sam, bn_batch, c.x, c.y, c.lr)?;
            return Ok(sam_output(Method::Sam, &r, c.y.dim(0)?));
        }
        let (out, ()) = c.sam_update(
            Method::Sam,
            |params, g| perturbation(params, g, sam),
            |_, g2| Ok((g2, None)),
            |_| Ok(()),
        )?;
        Ok(out)
    }
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
/// ([`crate::batched`]) (module docs). The SAM step kind.
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
        settings: *settings,
        x,
        y,
        lr,
    };
    SamKind.step(&NoSettings {}, c)
}
