//! GSAM (Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan and
//! Liu, "Surrogate Gap Minimization Improves Sharpness-Aware Training",
//! ICLR 2022, Algorithm 1): SAM's perturbed gradient minus `alpha` times
//! the part of the clean gradient orthogonal to it.
//!
//! Per m-sharpness chunk (the whole batch without chunks), as SAM takes
//! them (SAM's settings: rho, chunks, adaptive scaling, scope, ghost
//! batches; the decay term in both gradients where the weight decay is in
//! the loss):
//! - `g` at `w`, `eps = rho_t g / (||g|| + 1e-12)`, `g_p` at `w + eps`;
//! - `u = g_p / ||g_p||`, `g_perp = g - <u, g> u`;
//! - the chunk's direction `d = g_p - alpha g_perp`;
//!
//! and the update uses the mean of the chunks' directions: each chunk
//! decomposes its own gradients, as each device does in the official code
//! before the gradients are averaged. Norms and inner products run over
//! all trainable parameters, summed in f64 in name order; no epsilon in
//! the decomposition (as the official code). `alpha = 0` is SAM bit for
//! bit (`g_p - 0 g_perp` is `g_p` exactly).
//!
//! `rho_t`: GSAM ties rho to the learning rate, `rho_t = rho_min +
//! (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)`. That rule is
//! SAM's [`RhoSchedule::LrProportional`](crate::RhoSchedule) (`sam: (rho:
//! rho_max, rho_schedule: LrProportional(min: rho_min))`), which every
//! perturbing kind can use; the trainer hands each step its `rho_t`.
//!
//! Sources: the official JAX code, google-research/big_vision
//! `big_vision/trainers/proj/gsam/gsam.py` (`gsam_gradient`, read at commit
//! 0127fb6b337ee2a27bf4e54dea79cff176527356), and the authors' PyTorch
//! re-implementation juntang-zhuang/GSAM `gsam/gsam.py` and
//! `gsam/scheduler.py` (commit a770275b3324a3ed4bf4a1cddb976b2782ba852b),
//! which adds 1e-12 in the cosine and in a division by `||g_p||` (not
//! followed: a relative difference of 1e-12 / ||g_p||). Default `alpha =
//! 0.4`: the PyTorch re-implementation's CIFAR example
//! (`example/train.py`); the paper's experiments are on ImageNet
//! (big_vision's ViT config sets 0.6). Cost: two passes a step, as SAM.
//! No state. Test reference: `optim/tests/reference/gen_gsam_reference.py`.

use serde::{Deserialize, Serialize};

use super::{Method, StepCtx, StepKind, StepOutput, dot};
use crate::error::{Result, bad};
use crate::sam::perturbation;
use crate::sgd::Grads;

/// GSAM's own settings (rho and its schedule come from SAM's settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GsamSettings {
    /// Weight of the clean gradient's orthogonal part (0: SAM).
    pub alpha: f64,
}

impl Default for GsamSettings {
    fn default() -> Self {
        GsamSettings { alpha: 0.4 }
    }
}

#[derive(Debug, Default)]
pub struct Gsam;

/// `g_p - alpha (g - <u, g> u)`, `u = g_p / ||g_p||` (`u = 0` where `g_p`
/// is zero).
fn direction(g: &Grads, gp: &Grads, alpha: f64) -> Result<Grads> {
    let gpn = dot(gp, gp)?.sqrt();
    let inv = if gpn > 0.0 { 1.0 / gpn } else { 0.0 };
    let u: Grads = gp
        .iter()
        .map(|(k, t)| Ok((k.clone(), (t * inv)?)))
        .collect::<Result<_>>()?;
    let proj = dot(&u, g)?;
    gp.iter()
        .map(|(k, t)| {
            let perp = (&g[k] - (&u[k] * proj)?)?;
            Ok((k.clone(), (t - (perp * alpha)?)?))
        })
        .collect()
}

impl StepKind for Gsam {
    type Settings = GsamSettings;
    const USES_SAM: bool = true;

    fn check(s: &GsamSettings) -> Result<()> {
        if !(s.alpha.is_finite() && s.alpha >= 0.0) {
            return Err(bad(format!(
                "GSAM's alpha must be finite and >= 0, got {}",
                s.alpha
            )));
        }
        Ok(())
    }

    fn cost(_: &GsamSettings) -> f64 {
        2.0
    }

    fn step(&mut self, s: &GsamSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        Self::check(s)?;
        let sam = c.settings.sam;
        let (out, ()) = c.sam_update(
            Method::Gsam,
            |params, g| perturbation(params, g, sam),
            |g, gp| Ok((direction(&g, &gp, s.alpha)?, None)),
            |_| Ok(()),
        )?;
        Ok(out)
    }
}
