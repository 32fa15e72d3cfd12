//! Friendly SAM (Li, Zhou, He, Cheng and Huang, "Friendly Sharpness-Aware
//! Minimization", CVPR 2024): the perturbation along the stochastic
//! gradient minus `sigma` times its moving average (an estimate of the
//! full gradient, whose component the paper finds harmful).
//!
//! A step, per m-sharpness chunk as SAM takes them (SAM's settings: rho,
//! chunks, adaptive scaling, scope, ghost batches; the decay term in the
//! gradients where the weight decay is in the loss), with `m` the kind's
//! moving average from the previous step:
//! - `g_c` at `w`; `d_c = g_c - sigma m` (`d_c = g_c` at the kind's first
//!   step, which has no average: a SAM step);
//! - `eps_c = rho d_c / (||d_c|| + 1e-12)`, `g_s,c` at `w + eps_c`;
//!
//! then `m <- lambda m + (1 - lambda) mean_c g_c` (`m = mean_c g_c` at the
//! first step) and the update uses the mean of the `g_s,c`. Two passes a
//! step; `sigma = 0` is SAM bit for bit.
//!
//! The order follows the official code, not the paper's equations: the
//! direction subtracts the average before it takes the current gradient
//! (the paper writes `d_t = g_t - sigma m_t` with `m_t` updated first), and
//! the first step stores `m = g` (not `(1 - lambda) g`). With chunks, `m`
//! averages the mean of the chunks' gradients (the batch gradient the step
//! saw). State: `m`, saved with the trainer for exact resume; it counts
//! this kind's steps, so under a switch or PSAM it starts at the kind's
//! first step.
//!
//! Defaults `sigma = 1`, `lambda = 0.6`: the official `run.sh` for CIFAR
//! (ResNet-18, with rho 0.2); the class defaults to lambda 0.9 and
//! `train.py` to 0.95. Source: nblt/F-SAM `utils.py`, class `FriendlySAM`
//! (commit 2e2f9899ab473880430640fa5def4ad8f5aa2401). Test reference:
//! `optim/tests/reference/gen_fsam_reference.py`.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Method, StepCtx, StepKind, StepOutput};
use crate::error::{Result, bad};
use crate::sam::perturbation_along;
use crate::sgd::Grads;

/// F-SAM's own settings (rho and chunks come from SAM's settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsamSettings {
    /// How much of the moving average the perturbation's direction loses
    /// (0: SAM).
    pub sigma: f64,
    /// The moving average's factor: `m <- lambda m + (1 - lambda) g`.
    pub lambda: f64,
}

impl Default for FsamSettings {
    fn default() -> Self {
        FsamSettings {
            sigma: 1.0,
            lambda: 0.6,
        }
    }
}

/// The state: the moving average of the stochastic gradient.
#[derive(Debug, Default)]
pub struct Fsam {
    m: Option<Grads>,
}

impl Fsam {
    /// The moving average (`None` before the kind's first step).
    pub fn average(&self) -> Option<&Grads> {
        self.m.as_ref()
    }
}

impl StepKind for Fsam {
    type Settings = FsamSettings;
    const USES_SAM: bool = true;

    fn check(s: &FsamSettings) -> Result<()> {
        if !(s.sigma.is_finite() && s.sigma >= 0.0) {
            return Err(bad(format!(
                "F-SAM's sigma must be finite and >= 0, got {}",
                s.sigma
            )));
        }
        if !(0.0..1.0).contains(&s.lambda) {
            return Err(bad(format!(
                "F-SAM's lambda must be in [0, 1), got {}",
                s.lambda
            )));
        }
        Ok(())
    }

    fn cost(_: &FsamSettings) -> f64 {
        2.0
    }

    fn step(&mut self, s: &FsamSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        Self::check(s)?;
        let (sam, m) = (c.settings.sam, self.m.as_ref());
        let (out, next) = c.sam_update(
            Method::Fsam,
            |params, g| match m {
                None => perturbation_along(params, g, sam, sam.rho, 1e-12),
                Some(m) => {
                    let d: Grads = g
                        .iter()
                        .map(|(k, t)| Ok((k.clone(), (t - (&m[k] * s.sigma)?)?)))
                        .collect::<Result<_>>()?;
                    perturbation_along(params, &d, sam, sam.rho, 1e-12)
                }
            },
            |g, gs| Ok((gs, Some(g))),
            |r| {
                let gbar = r.kept.as_ref().expect("kept");
                match m {
                    None => Ok(gbar.clone()),
                    Some(m) => gbar
                        .iter()
                        .map(|(k, g)| {
                            Ok((k.clone(), ((&m[k] * s.lambda)? + (g * (1.0 - s.lambda))?)?))
                        })
                        .collect::<Result<_>>(),
                }
            },
        )?;
        self.m = Some(next);
        Ok(out)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .m
            .iter()
            .flatten()
            .map(|(name, t)| (format!("m.{name}"), t.clone()))
            .collect())
    }

    fn load_state(&mut self, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let mut m = Grads::new();
        for (k, t) in tensors {
            let name = k
                .strip_prefix("m.")
                .ok_or_else(|| bad(format!("unexpected tensor `{k}`")))?;
            m.insert(name.to_string(), t);
        }
        self.m = (!m.is_empty()).then_some(m);
        Ok(())
    }
}
