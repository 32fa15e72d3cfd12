//! Optimisers for sharpness-aware training: SGD with Nesterov momentum and
//! weight decay (PyTorch semantics), SAM with m-sharpness and the adaptive
//! variant, LookSAM, step kinds with their own settings and state
//! ([`steps`]), the per-step schedule of kinds (always, switch, PSAM),
//! learning-rate schedules, cost accounting, and state for exact resume.
//!
//! This crate knows nothing about files of studies, RON or the runner's
//! cache; its settings derive serde so study files can spell them.

pub mod batched;
pub mod curvature;
mod error;
mod lr;
mod sam;
mod schedule;
mod sgd;
pub mod steps;
pub mod theory;
mod trainer;

pub use error::{Error, ErrorKind, Result};
pub use lr::LrSchedule;
pub use sam::{Progress, RhoSchedule, SamConfig, Scope};
pub use schedule::{Point, Resolved, StepSchedule};
pub use sgd::{Decay, Grads, Sgd, SgdConfig, collect_grads};
pub use steps::{
    GhostForm, KindSettings, KindStates, Method, RunShape, StepCtx, StepKind, StepOutput,
    StepSettings, sam_step, sam_step_with, sgd_step, sgd_step_with,
};
pub use trainer::Trainer;
