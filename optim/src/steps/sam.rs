//! The SAM step kind (with m-sharpness and adaptive SAM as SAM's settings
//! say): two passes and an update ([`crate::sam_step_with`]).

use super::{NoSettings, StepCtx, StepKind};
use crate::error::Result;
use crate::sam::{StepOutput, StepSettings, sam_step_with};

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
