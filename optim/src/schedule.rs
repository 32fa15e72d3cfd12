//! Which steps are SGD steps and which are SAM steps.

use serde::{Deserialize, Serialize};

use crate::error::{Result, bad};

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

/// The two kinds of step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    Sgd,
    Sam,
}

impl Method {
    /// What one step costs, as a fraction of an SGD step (forward+backward
    /// passes over the batch): the one place that says so. A fraction, so
    /// that cheaper SAM variants can say what they cost.
    pub fn cost(self) -> f64 {
        match self {
            Method::Sgd => 1.0,
            Method::Sam => 2.0,
        }
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
        let sam = match *self {
            Resolved::Always(m) => {
                if m == Method::Sam {
                    end - start
                } else {
                    0
                }
            }
            Resolved::Switch { from, to, at } => {
                let before = at.clamp(start, end) - start;
                let after = (end - start) - before;
                (from == Method::Sam) as u64 * before + (to == Method::Sam) as u64 * after
            }
            Resolved::Psam { period, until } => {
                let cut = until.clamp(start, end);
                // multiples of `period` in [start, cut)
                let multiples = |n: u64| n.div_ceil(period);
                (multiples(cut) - multiples(start)) + (end - cut)
            }
        };
        match method {
            Method::Sam => sam,
            Method::Sgd => (end - start) - sam,
        }
    }

    /// Forward+backward passes of steps `[start, end)`, in SGD-step units.
    pub fn cost(&self, start: u64, end: u64) -> f64 {
        [Method::Sgd, Method::Sam]
            .into_iter()
            .map(|m| self.count(m, start, end) as f64 * m.cost())
            .sum()
    }
}
