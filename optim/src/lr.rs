//! Learning-rate schedules, as functions of the global step.

use serde::{Deserialize, Serialize};

/// The learning rate at each global step `t` of a run of `total_steps` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// `lr` at every step.
    Constant { lr: f64 },
    /// `lr * (1 + cos(pi * t / T)) / 2`, no warm-up; `T` is the total number
    /// of steps of the whole run, so a resumed run, or one that continues
    /// another run's prefix, sees the same rate at every step.
    Cosine { lr: f64 },
}

impl LrSchedule {
    pub fn at(&self, step: u64, total_steps: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Cosine { lr } => {
                let t = step as f64 / total_steps.max(1) as f64;
                lr * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}
