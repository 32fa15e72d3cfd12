//! The SGD step kind: one training-mode pass and an update
//! ([`sgd_step_with`]).

use candle_core::Tensor;
use samlab_models::Model;

use super::{GhostForm, NoSettings, StepCtx, StepKind, StepOutput, StepSettings};
use crate::batched;
use crate::error::Result;
use crate::sam::{SamConfig, ghost_pass, rollback_on_error};
use crate::sgd::Sgd;

#[derive(Debug, Default)]
pub struct SgdKind;

impl StepKind for SgdKind {
    type Settings = NoSettings;
    const USES_SAM: bool = false;
    const BATCHED: bool = true;

    fn cost(_: &NoSettings) -> f64 {
        1.0
    }

    fn step(&mut self, _: &NoSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        sgd_step_with(c.model, c.opt, &c.settings, c.x, c.y, c.lr)
    }
}

/// One SGD step: a training-mode pass and an update.
pub fn sgd_step(
    model: &Model,
    opt: &mut Sgd,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    let sam = SamConfig::new(0.0);
    sgd_step_with(model, opt, &StepSettings::sequential(&sam, None), x, y, lr)
}

/// [`sgd_step`] with the settings every step kind takes: in ghost batches
/// of `settings.bn_batch` images, one pass each or batched as
/// `settings.ghost` says ([`crate::batched`]); SAM's settings are unused.
/// The SGD step kind.
pub fn sgd_step_with(
    model: &Model,
    opt: &mut Sgd,
    settings: &StepSettings,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    if settings.ghost == GhostForm::Batched {
        let (loss, correct) = batched::sgd(model, opt, settings.bn_batch, x, y, lr)?;
        return Ok(StepOutput::sgd(loss, correct, y.dim(0)?));
    }
    rollback_on_error(model, || {
        let (loss, correct, grads) = ghost_pass(model, x, y, settings.bn_batch)?;
        opt.step(&model.params, &grads, lr)?;
        Ok(StepOutput::sgd(loss, correct, y.dim(0)?))
    })
}
