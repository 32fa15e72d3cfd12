//! LookSAM (Liu, Mai, Chen, Hsieh and You, "Towards Efficient and Scalable
//! Sharpness-Aware Minimization", CVPR 2022, Algorithm 1): SAM's gradient
//! every `k` steps of the kind, and in between the clean gradient plus the
//! stored part of SAM's gradient orthogonal to it.
//!
//! At a step where the kind's own step counter `c` is a multiple of `k`
//! (and at its first step, when nothing is stored):
//! - `g` at `w` and `g_s` at `w + eps` as a SAM step takes them (SAM's
//!   settings: rho, m-sharpness chunks, adaptive scaling; with chunks both
//!   are the means over the chunks);
//! - `g_v = g_s - (<g, g_s> / ||g||^2) g` (the paper's
//!   `g_s - ||g_s|| cos(theta) g / ||g||`), stored;
//! - the update uses `g_s` (two passes).
//!
//! At the other steps: `g` at `w` (one pass) and the update uses
//! `g + alpha (||g|| / ||g_v||) g_v`.
//!
//! Norms and inner products run over all trainable parameters, summed in
//! f64 in name order. The counter counts this kind's steps, not the run's,
//! so under a switch or PSAM its first step takes SAM's gradient. State:
//! the counter and `g_v`, saved with the trainer for exact resume. With the
//! weight decay in the loss (`Decay::Loss`) `g` and `g_s` carry the decay
//! term as SAM's do. Planned cost `1 + 1/k` SGD steps a step; each step
//! reports the passes it ran.
//!
//! There is no official code from the authors; the test reference
//! (`optim/tests/reference/gen_looksam_reference.py`, JAX, f64) is written
//! from the paper.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Method, StepCtx, StepKind, StepOutput, counter_tensor, dot, read_counter};
use crate::error::{Result, bad};
use crate::sam::{ghost_pass, loss_decay, perturbation, rollback_on_error, update, with_decay};
use crate::sgd::Grads;

/// LookSAM's own settings (SAM's rho and chunks come from SAM's settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LookSamSettings {
    /// SAM's gradient every `k` steps of the kind (k = 1: SAM).
    pub k: u64,
    /// Weight of the stored orthogonal direction in between.
    pub alpha: f64,
}

impl Default for LookSamSettings {
    fn default() -> Self {
        LookSamSettings { k: 5, alpha: 0.7 }
    }
}

/// The state: steps taken and the stored orthogonal part of SAM's gradient.
#[derive(Debug, Default)]
pub struct LookSam {
    steps: u64,
    g_v: Option<Grads>,
}

impl LookSam {
    /// The stored orthogonal direction `g_v` (`None` before the first step).
    pub fn stored(&self) -> Option<&Grads> {
        self.g_v.as_ref()
    }

    /// Steps of this kind taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// `a + c b` by name.
fn axpy(a: &Grads, c: f64, b: &Grads) -> Result<Grads> {
    a.iter()
        .map(|(name, t)| Ok((name.clone(), (t + (&b[name] * c)?)?)))
        .collect()
}

impl StepKind for LookSam {
    type Settings = LookSamSettings;
    const USES_SAM: bool = true;

    fn check(s: &LookSamSettings) -> Result<()> {
        if s.k == 0 {
            return Err(bad("LookSAM's k must be at least 1"));
        }
        if !(s.alpha.is_finite() && s.alpha >= 0.0) {
            return Err(bad(format!(
                "LookSAM's alpha must be finite and >= 0, got {}",
                s.alpha
            )));
        }
        Ok(())
    }

    fn cost(s: &LookSamSettings) -> f64 {
        1.0 + 1.0 / s.k.max(1) as f64
    }

    fn step(&mut self, s: &LookSamSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        Self::check(s)?;
        let stored = self
            .g_v
            .as_ref()
            .filter(|_| !self.steps.is_multiple_of(s.k));
        let out = match stored {
            None => {
                let sam = c.settings.sam;
                let (out, g_v) = c.sam_update(
                    Method::LookSam,
                    |params, g| perturbation(params, g, sam),
                    |g, gs| Ok((gs, Some(g))),
                    |r| {
                        let g = r.kept.as_ref().expect("kept");
                        let gg = dot(g, g)?;
                        let coef = if gg > 0.0 {
                            dot(g, &r.perturbed)? / gg
                        } else {
                            0.0
                        };
                        axpy(&r.perturbed, -coef, g)
                    },
                )?;
                self.g_v = Some(g_v);
                out
            }
            Some(g_v) => {
                c.settings.sam.check()?;
                let (model, x, y) = (c.model, c.x, c.y);
                rollback_on_error(model, || {
                    let (loss, correct, g) = ghost_pass(model, x, y, c.settings.bn_batch)?;
                    let g = match loss_decay(c.opt) {
                        Some(wd) => with_decay(&model.params, g, wd, None)?,
                        None => g,
                    };
                    let vv = dot(g_v, g_v)?;
                    let scale = if vv > 0.0 {
                        s.alpha * dot(&g, &g)?.sqrt() / vv.sqrt()
                    } else {
                        0.0
                    };
                    update(model, c.opt, &axpy(&g, scale, g_v)?, c.lr)?;
                    Ok(StepOutput {
                        method: Method::LookSam,
                        loss,
                        correct,
                        perturbed_correct: None,
                        samples: y.dim(0)?,
                        passes: 1.0,
                    })
                })?
            }
        };
        self.steps += 1;
        Ok(out)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        if self.steps == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![("steps".to_string(), counter_tensor(self.steps)?)];
        for (name, t) in self.g_v.iter().flatten() {
            out.push((format!("g_v.{name}"), t.clone()));
        }
        Ok(out)
    }

    fn load_state(&mut self, mut tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let Some(steps) = tensors.remove("steps") else {
            // A trainer that never took a LookSAM step saved nothing.
            if let Some(k) = tensors.keys().next() {
                return Err(bad(format!("`{k}` without a step counter")));
            }
            *self = LookSam::default();
            return Ok(());
        };
        let mut g_v = Grads::new();
        for (k, t) in tensors {
            let name = k
                .strip_prefix("g_v.")
                .ok_or_else(|| bad(format!("unexpected tensor `{k}`")))?;
            g_v.insert(name.to_string(), t);
        }
        self.steps = read_counter(&steps)?;
        self.g_v = (!g_v.is_empty()).then_some(g_v);
        Ok(())
    }
}
