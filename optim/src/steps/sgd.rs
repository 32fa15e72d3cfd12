//! The SGD step kind: one training-mode pass and an update
//! ([`sgd_step_with`]).

use candle_core::Tensor;
use samlab_models::Model;

use super::{NoSettings, StepCtx, StepKind, StepOutput, StepSettings};
use crate::error::Result;
use crate::sam::{SamConfig, ghost_pass, rollback_on_error};
use crate::sgd::Sgd;

#[derive(Debug, Default)]
pub struct SgdKind;

impl StepKind for SgdKind {
    type Settings = NoSettings;
    const USES_SAM: bool = false;

    fn cost(_: &NoSettings) -> f64 {
        1.0
    }

    fn step(&mut self, _: &NoSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        let settings = StepSettings {
            sam: c.sam,
            bn_batch: c.bn_batch,
        };
        sgd_step_with(c.model, c.opt, &settings, c.x, c.y, c.lr)
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
    let whole_batch = StepSettings {
        sam: &sam,
        bn_batch: None,
    };
    sgd_step_with(model, opt, &whole_batch, x, y, lr)
}

/// [`sgd_step`] with the settings every step kind takes: in ghost batches
/// of `settings.bn_batch` images (module docs); SAM's settings are unused.
/// The SGD step kind.
pub fn sgd_step_with(
    model: &Model,
    opt: &mut Sgd,
    settings: &StepSettings,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    rollback_on_error(model, || {
        let (loss, correct, grads) = ghost_pass(model, x, y, settings.bn_batch)?;
        opt.step(&model.params, &grads, lr)?;
        Ok(StepOutput::sgd(loss, correct, y.dim(0)?))
    })
}
