//! The SAM step kind (with m-sharpness and adaptive SAM as SAM's settings
//! say): two passes and an update ([`sam_step_with`]).

use candle_core::Tensor;
use samlab_models::Model;

use super::{Method, NoSettings, StepCtx, StepKind, StepOutput, StepSettings};
use crate::error::Result;
use crate::sam::{SamConfig, perturbation};
use crate::sgd::Sgd;

#[derive(Debug, Default)]
pub struct SamKind;

impl StepKind for SamKind {
    type Settings = NoSettings;
    const USES_SAM: bool = true;

    fn cost(_: &NoSettings) -> f64 {
        2.0
    }

    fn step(&mut self, _: &NoSettings, c: StepCtx<'_>) -> Result<StepOutput> {
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

/// One SAM step (see the module docs).
pub fn sam_step(
    model: &Model,
    opt: &mut Sgd,
    cfg: &SamConfig,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    let whole_batch = StepSettings {
        sam: cfg,
        bn_batch: None,
    };
    sam_step_with(model, opt, &whole_batch, x, y, lr)
}

/// [`sam_step`] with the settings every step kind takes: SAM's and the
/// ghost-batch size (module docs). The SAM step kind.
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
        x,
        y,
        lr,
    };
    SamKind.step(&NoSettings {}, c)
}
