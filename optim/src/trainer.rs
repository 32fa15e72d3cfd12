//! A run's optimisation state: the base optimiser, SAM settings, the
//! learning-rate and SGD/SAM schedules, the global step and the passes spent.
//!
//! Each step gets SAM's settings with rho at that step ([`Trainer::sam_at`]:
//! the [`RhoSchedule`](crate::RhoSchedule) of the run's progress and
//! learning rate), so a step kind reads one rho and knows no schedule.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use samlab_models::Model;

use crate::error::{ErrorKind, Result};
use crate::lr::LrSchedule;
use crate::sam::{Progress, SamConfig};
use crate::schedule::{Resolved, StepSchedule};
use crate::sgd::{Sgd, SgdConfig};
use crate::steps::{
    GhostForm, KindSettings, KindStates, Method, RunShape, StepCtx, StepOutput, StepSettings,
};

pub struct Trainer {
    pub sgd: Sgd,
    pub sam: SamConfig,
    pub lr: LrSchedule,
    pub schedule: Resolved,
    /// Steps of the whole run (the cosine schedule's T).
    pub total_steps: u64,
    /// The next global step.
    pub step: u64,
    /// Forward+backward passes so far, in SGD-step units.
    pub passes: f64,
    /// Ghost batches: BatchNorm over slices of this many images, for SGD
    /// and SAM steps alike (see `sam`'s module docs).
    pub bn_batch: Option<usize>,
    /// How the ghost batches are computed (one pass each, or batched).
    pub ghost: GhostForm,
    /// The step kinds' own settings.
    pub kinds: KindSettings,
    /// What the step kinds keep between steps (saved with the rest).
    pub states: KindStates,
}

impl Trainer {
    /// A run of `total_steps` steps (`steps_per_epoch` resolves epochs in the
    /// schedule) at its first step, with fresh momentum.
    pub fn new(
        sgd: SgdConfig,
        sam: SamConfig,
        lr: LrSchedule,
        schedule: &StepSchedule,
        total_steps: u64,
        steps_per_epoch: u64,
    ) -> Result<Trainer> {
        let schedule = schedule.resolve(total_steps, steps_per_epoch)?;
        Trainer::resolved(sgd, sam, lr, schedule, total_steps)
    }

    /// [`Trainer::new`] with the schedule already resolved to steps (a
    /// plan's, which the run then cannot resolve otherwise).
    pub fn resolved(
        sgd: SgdConfig,
        sam: SamConfig,
        lr: LrSchedule,
        schedule: Resolved,
        total_steps: u64,
    ) -> Result<Trainer> {
        sam.check()?;
        // Its points must lie in this run, as `StepSchedule::resolve`
        // makes them for its length.
        schedule.check(total_steps)?;
        Ok(Trainer {
            sgd: Sgd::new(sgd)?,
            sam,
            lr,
            schedule,
            total_steps,
            step: 0,
            passes: 0.0,
            bn_batch: None,
            ghost: GhostForm::Sequential,
            kinds: KindSettings::default(),
            states: KindStates::default(),
        })
    }

    /// The same run with the step kinds' settings `kinds`, checked, and
    /// checked with SAM's settings and the ghost batch for every kind the
    /// schedule uses ([`StepKind::check_run`](crate::StepKind::check_run)).
    pub fn with_kinds(mut self, kinds: KindSettings) -> Result<Trainer> {
        kinds.check()?;
        self.kinds = kinds;
        self.check_kinds()?;
        Ok(self)
    }

    /// The same run with ghost batches of `bn_batch` images.
    pub fn with_bn_batch(mut self, bn_batch: Option<usize>) -> Result<Trainer> {
        if bn_batch == Some(0) {
            return Err(crate::error::bad("the BatchNorm batch must be at least 1"));
        }
        self.bn_batch = bn_batch;
        self.check_kinds()?;
        Ok(self)
    }

    /// The same run with its ghost batches computed in form `ghost`
    /// (refused where a kind the schedule uses has no batched form).
    pub fn with_ghost(mut self, ghost: GhostForm) -> Result<Trainer> {
        self.ghost = ghost;
        self.check_kinds()?;
        Ok(self)
    }

    /// The settings a step takes: SAM's `sam` (the run's, or its rho at a
    /// step) with the run's ghost batches.
    fn settings<'a>(&self, sam: &'a SamConfig) -> StepSettings<'a> {
        StepSettings {
            sam,
            bn_batch: self.bn_batch,
            ghost: self.ghost,
        }
    }

    /// Checks each kind the schedule uses against SAM's settings and the
    /// ghost batch (a kind whose step cannot take m-sharpness chunks, say).
    fn check_kinds(&self) -> Result<()> {
        for &m in Method::ALL {
            if self.schedule.count(m, 0, self.total_steps) > 0 {
                let run = RunShape {
                    settings: self.settings(&self.sam),
                    batch: None,
                };
                self.kinds.check_run(m, &run)?;
            }
        }
        Ok(())
    }

    /// The learning-rate schedule's largest and smallest rates (what
    /// [`RhoSchedule::LrProportional`](crate::RhoSchedule) relates rho to).
    pub fn lr_range(&self) -> (f64, f64) {
        match self.lr {
            LrSchedule::Constant { lr } => (lr, lr),
            // lr (1 + cos(pi t / T)) / 2: lr at t = 0, 0 at t = T.
            LrSchedule::Cosine { lr } => (lr, 0.0),
        }
    }

    /// SAM's settings at global step `t`: rho as its schedule says.
    pub fn sam_at(&self, t: u64) -> SamConfig {
        let (lr_max, lr_min) = self.lr_range();
        self.sam.at(Progress {
            step: t,
            total_steps: self.total_steps,
            lr: self.lr.at(t, self.total_steps),
            lr_max,
            lr_min,
        })
    }

    /// One step on batch (x, y): the method and rate of the current global step.
    pub fn train_step(&mut self, model: &Model, x: &Tensor, y: &Tensor) -> Result<StepOutput> {
        let t = self.step;
        let lr = self.lr.at(t, self.total_steps);
        let sam = self.sam_at(t);
        let settings = self.settings(&sam);
        let ctx = StepCtx {
            model,
            opt: &mut self.sgd,
            settings,
            x,
            y,
            lr,
        };
        let out = self
            .states
            .step(self.schedule.method(t), &self.kinds, ctx)
            .map_err(|e| match e.kind {
                ErrorKind::NonFinite { loss, .. } => ErrorKind::NonFinite { step: t, loss }.into(),
                _ => e,
            })?;
        self.step += 1;
        self.passes += out.passes;
        Ok(out)
    }

    /// Saves the momentum buffers, the step and the pass count and the step
    /// kinds' state (`kind.<field>.<name>`) as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = self
            .sgd
            .state()
            .iter()
            .map(|(k, v)| (format!("momentum.{k}"), v.clone()))
            .collect();
        for (k, v) in self.states.tensors()? {
            tensors.insert(format!("kind.{k}"), v);
        }
        // f64: passes may be fractional; steps stay exact below 2^53.
        let counters = [self.step as f64, self.passes];
        tensors.insert(
            "trainer.counters".into(),
            Tensor::new(&counters, &Device::Cpu)?,
        );
        candle_core::safetensors::save(&tensors, path).map_err(|e| ErrorKind::StateMismatch {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(())
    }

    /// Loads what [`save`](Self::save) wrote, checked against the model.
    pub fn load(&mut self, model: &Model, path: &Path) -> Result<()> {
        let fail = |detail: String| -> crate::Error {
            ErrorKind::StateMismatch {
                path: path.display().to_string(),
                detail,
            }
            .into()
        };
        let device = model
            .params
            .trainable()
            .next()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let loaded =
            candle_core::safetensors::load(path, &device).map_err(|e| fail(e.to_string()))?;
        let counters = loaded
            .get("trainer.counters")
            .ok_or_else(|| fail("no trainer.counters".into()))?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        // Files of earlier versions hold i64 counters; both read as f64.
        if counters.len() != 2
            || counters.iter().any(|&c| !(c >= 0.0 && c.is_finite()))
            || counters[0].fract() != 0.0
        {
            return Err(fail(format!("bad counters {counters:?}")));
        }
        let mut momentum = BTreeMap::new();
        let mut kinds = BTreeMap::new();
        for (k, v) in loaded {
            if let Some(name) = k.strip_prefix("momentum.") {
                momentum.insert(name.to_string(), v);
            } else if let Some(name) = k.strip_prefix("kind.") {
                kinds.insert(name.to_string(), v);
            } else if k != "trainer.counters" {
                return Err(fail(format!("unexpected tensor `{k}`")));
            }
        }
        self.sgd
            .set_state(&model.params, momentum)
            .map_err(|e| fail(e.to_string()))?;
        let mut states = KindStates::default();
        states.load(kinds).map_err(|e| fail(e.to_string()))?;
        self.states = states;
        self.step = counters[0] as u64;
        self.passes = counters[1];
        Ok(())
    }
}
