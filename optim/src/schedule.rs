//! Which steps are SGD steps and which are SAM steps.

use serde::{Deserialize, Serialize};

use candle_core::Tensor;
use samlab_models::Model;

use crate::error::{Result, bad};
use crate::sam::{StepOutput, StepSettings};
use crate::sgd::Sgd;

/// A point in training: an absolute step, an epoch, or a fraction of the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Point {
    Step(u64),
    Epoch(f64),
    /// A fraction of all steps, in [0, 1] (the thesis switches at 0.75).
    Fraction(f64),
}

impl Point {
    /// The global step this point stands for (rounded down).
    pub fn resolve(&self, total_steps: u64, steps_per_epoch: u64) -> Result<u64> {
        let step = match *self {
            Point::Step(s) => s as f64,
            Point::Epoch(e) => e * steps_per_epoch as f64,
            Point::Fraction(f) => {
                if !(0.0..=1.0).contains(&f) {
                    return Err(bad(format!("fraction {f} is outside [0, 1]")));
                }
                f * total_steps as f64
            }
        };
        if !step.is_finite() || step < 0.0 || step > total_steps as f64 {
            return Err(bad(format!(
                "{self:?} is step {step}, outside the run's 0..={total_steps}"
            )));
        }
        Ok(step.floor() as u64)
    }
}

/// Defines [`Method`] from the list of step kinds: `Variant => cost c, step
/// function`. The cost is what one step costs as a fraction of an SGD step
/// (forward+backward passes over the batch): the one place that says so, a
/// fraction so that cheaper SAM variants can say what they cost. A step
/// function takes `(model, &mut Sgd, &StepSettings, x, y, lr)`. Adding a step
/// kind is a new file with its step function plus one line here.
macro_rules! steps {
    ($($variant:ident => cost $cost:expr, $step:path;)*) => {
        /// The kinds of step.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Method {
            $($variant,)*
        }

        impl Method {
            /// Every kind, in the order of the list (a kind's index is part
            /// of shared-prefix keys: append, never reorder).
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            /// What one step costs, as a fraction of an SGD step.
            pub fn cost(self) -> f64 {
                match self { $(Method::$variant => $cost,)* }
            }

            /// Takes one step of this kind on batch (x, y) at rate `lr`.
            pub fn step(
                self,
                model: &Model,
                opt: &mut Sgd,
                settings: &StepSettings,
                x: &Tensor,
                y: &Tensor,
                lr: f64,
            ) -> Result<StepOutput> {
                match self { $(Method::$variant => $step(model, opt, settings, x, y, lr),)* }
            }
        }
    };
}

steps! {
    Sgd => cost 1.0, crate::sam::sgd_step_with;
    Sam => cost 2.0, crate::sam::sam_step_with;
}

impl Method {
    /// The kind's position in [`Method::ALL`].
    pub fn index(self) -> usize {
        Method::ALL
            .iter()
            .position(|m| *m == self)
            .expect("every kind is listed")
    }
}

/// Which method each global step uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepSchedule {
    /// The same method at every step.
    Always(Method),
    /// `from` before `at`, `to` from `at` on (SGD->SAM, SAM->SGD).
    Switch { from: Method, to: Method, at: Point },
    /// The thesis' Algorithm 1 (PSAM): before step E a SAM step when
    /// `t mod period == 0` and SGD otherwise; from E on, SAM every step.
    Psam { period: u64, until: Point },
}

/// A [`StepSchedule`] with its points resolved to steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Always(Method),
    Switch { from: Method, to: Method, at: u64 },
    Psam { period: u64, until: u64 },
}

impl StepSchedule {
    pub fn resolve(&self, total_steps: u64, steps_per_epoch: u64) -> Result<Resolved> {
        Ok(match self {
            StepSchedule::Always(m) => Resolved::Always(*m),
            StepSchedule::Switch { from, to, at } => Resolved::Switch {
                from: *from,
                to: *to,
                at: at.resolve(total_steps, steps_per_epoch)?,
            },
            StepSchedule::Psam { period, until } => {
                if *period == 0 {
                    return Err(bad("PSAM period must be at least 1"));
                }
                Resolved::Psam {
                    period: *period,
                    until: until.resolve(total_steps, steps_per_epoch)?,
                }
            }
        })
    }
}

impl Resolved {
    /// The method of global step `t`.
    pub fn method(&self, t: u64) -> Method {
        match *self {
            Resolved::Always(m) => m,
            Resolved::Switch { from, to, at } => {
                if t < at {
                    from
                } else {
                    to
                }
            }
            Resolved::Psam { period, until } => {
                if t >= until || t.is_multiple_of(period) {
                    Method::Sam
                } else {
                    Method::Sgd
                }
            }
        }
    }

    /// Steps in `[start, end)` that use `method`, counted in closed form.
    pub fn count(&self, method: Method, start: u64, end: u64) -> u64 {
        let n = end - start;
        match *self {
            Resolved::Always(m) => (m == method) as u64 * n,
            Resolved::Switch { from, to, at } => {
                let before = at.clamp(start, end) - start;
                (from == method) as u64 * before + (to == method) as u64 * (n - before)
            }
            Resolved::Psam { period, until } => {
                let cut = until.clamp(start, end);
                // multiples of `period` in [start, cut)
                let multiples = |k: u64| k.div_ceil(period);
                let sam = (multiples(cut) - multiples(start)) + (end - cut);
                if method == Method::Sam {
                    sam
                } else if method == Method::Sgd {
                    n - sam
                } else {
                    0
                }
            }
        }
    }

    /// Forward+backward passes of steps `[start, end)`, in SGD-step units.
    pub fn cost(&self, start: u64, end: u64) -> f64 {
        Method::ALL
            .iter()
            .map(|m| self.count(*m, start, end) as f64 * m.cost())
            .sum()
    }
}
