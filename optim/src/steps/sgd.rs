//! The SGD step kind: one training-mode pass and an update
//! ([`crate::sgd_step_with`]).

use super::{NoSettings, StepCtx, StepKind};
use crate::error::Result;
use crate::sam::{StepOutput, StepSettings, sgd_step_with};

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
