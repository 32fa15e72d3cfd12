//! The SAM step kind (with m-sharpness and adaptive SAM as SAM's settings
//! say): two passes and an update ([`sam_step_with`]).

use candle_core::Tensor;
use samlab_models::Model;

use super::{Method, NoSettings, StepCtx, StepKind, StepOutput, StepSettings};
use crate::error::Result;
use crate::sam::{Clean, SamConfig, loss_decay, rollback_on_error, sam_gradient, update};
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
        let settings = StepSettings {
            sam: c.sam,
            bn_batch: c.bn_batch,
        };
        sam_step_with(c.model, c.opt, &settings, c.x, c.y, c.lr)
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
    settings.sam.check()?;
    rollback_on_error(model, || {
        sam_update(model, opt, settings.sam, settings.bn_batch, x, y, lr)
    })
}

fn sam_update(
    model: &Model,
    opt: &mut Sgd,
    cfg: &SamConfig,
    bn_batch: Option<usize>,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    let r = sam_gradient(model, cfg, bn_batch, loss_decay(opt), x, y, Clean::Drop)?;
    update(model, opt, &r.perturbed, lr)?;
    Ok(StepOutput {
        method: Method::Sam,
        loss: r.loss,
        correct: r.correct,
        perturbed_correct: Some(r.perturbed_correct),
        samples: y.dim(0)?,
        // Two passes over the batch.
        passes: 2.0,
    })
}
