//! Which steps are SGD steps and which are SAM steps.

use serde::{Deserialize, Serialize};

use crate::error::{Result, bad};
use crate::steps::{KindSettings, Method};

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

/// PSAM's SAM steps unless a schedule says otherwise.
fn sam_kind() -> Method {
    Method::Sam
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
    /// `with` is the kind of those SAM steps (default `Sam`; any kind, e.g.
    /// `LookSam`).
    Psam {
        period: u64,
        until: Point,
        #[serde(default = "sam_kind")]
        with: Method,
    },
}

/// A [`StepSchedule`] with its points resolved to steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Always(Method),
    Switch {
        from: Method,
        to: Method,
        at: u64,
    },
    Psam {
        period: u64,
        until: u64,
        with: Method,
    },
}

impl StepSchedule {
    /// The kinds its steps may be of.
    pub fn kinds(&self) -> Vec<Method> {
        match *self {
            StepSchedule::Always(m) => vec![m],
            StepSchedule::Switch { from, to, .. } => vec![from, to],
            StepSchedule::Psam { with, .. } => vec![Method::Sgd, with],
        }
    }

    pub fn resolve(&self, total_steps: u64, steps_per_epoch: u64) -> Result<Resolved> {
        let resolved = match self {
            StepSchedule::Always(m) => Resolved::Always(*m),
            StepSchedule::Switch { from, to, at } => Resolved::Switch {
                from: *from,
                to: *to,
                at: at.resolve(total_steps, steps_per_epoch)?,
            },
            StepSchedule::Psam {
                period,
                until,
                with,
            } => Resolved::Psam {
                period: *period,
                until: until.resolve(total_steps, steps_per_epoch)?,
                with: *with,
            },
        };
        resolved.check(total_steps)?;
        Ok(resolved)
    }
}

impl Resolved {
    /// Checks a schedule resolved elsewhere against a run of `total_steps`
    /// steps, as [`StepSchedule::resolve`] makes it: a PSAM period of at
    /// least 1, its point (switch, PSAM's end) within the run.
    pub fn check(&self, total_steps: u64) -> Result<()> {
        let point = match *self {
            Resolved::Always(_) => None,
            Resolved::Switch { at, .. } => Some(at),
            Resolved::Psam { period, until, .. } => {
                if period == 0 {
                    return Err(bad("PSAM period must be at least 1"));
                }
                Some(until)
            }
        };
        match point.filter(|&p| p > total_steps) {
            Some(p) => Err(bad(format!(
                "the schedule's step {p} is outside the run's 0..={total_steps}"
            ))),
            None => Ok(()),
        }
    }

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
            Resolved::Psam {
                period,
                until,
                with,
            } => {
                if t >= until || t.is_multiple_of(period) {
                    with
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
            Resolved::Psam {
                period,
                until,
                with,
            } => {
                let cut = until.clamp(start, end);
                // multiples of `period` in [start, cut)
                let multiples = |k: u64| k.div_ceil(period);
                let sam = (multiples(cut) - multiples(start)) + (end - cut);
                (method == with) as u64 * sam + (method == Method::Sgd) as u64 * (n - sam)
            }
        }
    }

    /// Planned forward+backward passes of steps `[start, end)`, in SGD-step
    /// units, with the kinds' settings `kinds`.
    pub fn cost(&self, kinds: &KindSettings, start: u64, end: u64) -> f64 {
        Method::ALL
            .iter()
            .map(|m| self.count(*m, start, end) as f64 * kinds.cost(*m))
            .sum()
    }
}
