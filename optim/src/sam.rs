//! Sharpness-aware minimisation (Foret et al. 2021; the thesis' Eq. 2.2
//! with p = 2), its m-sharpness variant and adaptive SAM (Kwon et al. 2021).
//!
//! A SAM step on a batch:
//! 1. first pass at `w`: loss, accuracy, gradient `g` (BatchNorm running
//!    statistics are updated here and only here);
//! 2. `eps = rho * g / (||g||_2 + 1e-12)`, one norm over all trainable
//!    parameters (ASAM: `eps = rho * T^2 g / (||T g|| + 1e-12)` with
//!    `T = |w| + eta` on parameters whose name ends in `weight`, 1 elsewhere);
//! 3. second pass at `w + eps`: gradient `g'`; the running statistics of
//!    this pass are discarded;
//! 4. `w` is restored bit for bit and the base optimiser steps with `g'`.
//!
//! A step that fails (a NaN or infinite loss, say) changes nothing: the
//! update comes last, and the running statistics of its passes are put back.
//!
//! With m-sharpness (`chunk = Some(m)`, m dividing the batch) steps 1-3 run
//! per chunk of m samples, each with its own `eps`, and `g'` is the mean of
//! the chunks' second-pass gradients. Each chunk's first pass updates the
//! running statistics in turn (as if each chunk were a device's batch).

use candle_core::Tensor;
use samlab_models::{Model, ParamStore, cross_entropy};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, bad};
use crate::schedule::Method;
use crate::sgd::{Grads, Sgd, collect_grads};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamConfig {
    /// Radius of the perturbation.
    pub rho: f64,
    /// m-sharpness: the chunk size m (`None`: the whole batch).
    pub chunk: Option<usize>,
    /// Adaptive SAM: scale the perturbation by |w| + eta.
    pub adaptive: bool,
    /// ASAM's eta.
    pub eta: f64,
}

impl SamConfig {
    pub fn new(rho: f64) -> Self {
        SamConfig {
            rho,
            chunk: None,
            adaptive: false,
            eta: 0.01,
        }
    }

    pub fn check(&self) -> Result<()> {
        if !(self.rho >= 0.0 && self.rho.is_finite()) {
            return Err(bad(format!(
                "rho must be finite and >= 0, got {}",
                self.rho
            )));
        }
        if self.chunk == Some(0) {
            return Err(bad("the m-sharpness chunk size must be at least 1"));
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub method: Method,
    /// Mean training loss of the batch (first pass).
    pub loss: f64,
    /// Correctly classified samples of the batch (first pass).
    pub correct: usize,
    pub samples: usize,
    /// Forward+backward passes over the whole batch, in SGD-step units.
    pub passes: f64,
}

/// Loss, number of correct predictions and gradients of one training-mode pass.
fn pass(model: &Model, x: &Tensor, y: &Tensor) -> Result<(f64, usize, Grads)> {
    let logits = model.forward(x, true)?;
    let loss = cross_entropy(&logits, y)?;
    let correct = logits
        .argmax(1)?
        .eq(y)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(ErrorKind::NonFinite {
            step: 0,
            loss: value,
        }
        .into());
    }
    let grads = collect_grads(&model.params, &loss.backward()?)?;
    Ok((value, correct, grads))
}

/// Runs one step; if it fails, puts back the running statistics its passes
/// changed. Weights and momentum change only in the step's final update, so
/// a failed step leaves the model and the optimiser as they were.
fn rollback_on_error(
    model: &Model,
    step: impl FnOnce() -> Result<StepOutput>,
) -> Result<StepOutput> {
    // Running statistics are a few floats per channel: cheap to keep.
    let buffers = model.params.snapshot_buffers()?;
    let out = step();
    if out.is_err() {
        model.params.restore_buffers(&buffers)?;
    }
    out
}

/// One SGD step: a training-mode pass and an update.
pub fn sgd_step(
    model: &Model,
    opt: &mut Sgd,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    rollback_on_error(model, || {
        let (loss, correct, grads) = pass(model, x, y)?;
        opt.step(&model.params, &grads, lr)?;
        Ok(StepOutput {
            method: Method::Sgd,
            loss,
            correct,
            samples: y.dim(0)?,
            passes: Method::Sgd.cost(),
        })
    })
}

/// [`sgd_step`] with the signature of every step kind (SAM's settings unused).
pub(crate) fn sgd_kind_step(
    model: &Model,
    opt: &mut Sgd,
    _sam: &SamConfig,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    sgd_step(model, opt, x, y, lr)
}

/// The perturbation for gradient `g` at the current weights.
fn perturbation(params: &ParamStore, g: &Grads, cfg: &SamConfig) -> Result<Grads> {
    let mut scaled = Grads::new();
    let mut sq = 0f64;
    for (name, var) in params.trainable() {
        let gi = &g[name];
        let t = if cfg.adaptive && name.ends_with("weight") {
            Some((var.as_tensor().detach().abs()? + cfg.eta)?)
        } else {
            None
        };
        let tg = match &t {
            Some(t) => (gi * t)?,
            None => gi.clone(),
        };
        sq += tg
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        // eps direction: T^2 g = T (T g)
        let dir = match &t {
            Some(t) => (&tg * t)?,
            None => tg,
        };
        scaled.insert(name.to_string(), dir);
    }
    let scale = cfg.rho / (sq.sqrt() + 1e-12);
    for v in scaled.values_mut() {
        *v = (&*v * scale)?;
    }
    Ok(scaled)
}

/// Runs a pass at `w + eps` and puts `w` and the running statistics back exactly.
fn perturbed_grads(model: &Model, eps: &Grads, x: &Tensor, y: &Tensor) -> Result<Grads> {
    let params = &model.params;
    let originals: Vec<Tensor> = params
        .trainable()
        .map(|(_, v)| v.as_tensor().detach().copy())
        .collect::<candle_core::Result<_>>()?;
    let buffers = params.snapshot_buffers()?;
    for (name, var) in params.trainable() {
        var.set(&(var.as_tensor().detach() + &eps[name])?)?;
    }
    let result = pass(model, x, y);
    for ((_, var), w) in params.trainable().zip(&originals) {
        var.set(w)?;
    }
    params.restore_buffers(&buffers)?;
    Ok(result?.2)
}

/// One SAM step (see the module docs).
pub fn sam_step(
    model: &Model,
    opt: &mut Sgd,
    cfg: &SamConfig,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    cfg.check()?;
    rollback_on_error(model, || sam_update(model, opt, cfg, x, y, lr))
}

fn sam_update(
    model: &Model,
    opt: &mut Sgd,
    cfg: &SamConfig,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<StepOutput> {
    let n = y.dim(0)?;
    let m = cfg.chunk.unwrap_or(n).min(n);
    if n % m != 0 {
        return Err(bad(format!(
            "the m-sharpness chunk {m} does not divide the batch of {n}"
        )));
    }
    let chunks = n / m;
    let (mut loss, mut correct) = (0f64, 0usize);
    let mut total: Option<Grads> = None;
    for c in 0..chunks {
        let (xc, yc) = if chunks == 1 {
            (x.clone(), y.clone())
        } else {
            (x.narrow(0, c * m, m)?, y.narrow(0, c * m, m)?)
        };
        let (l, k, g) = pass(model, &xc, &yc)?;
        loss += l / chunks as f64;
        correct += k;
        let eps = perturbation(&model.params, &g, cfg)?;
        let g2 = perturbed_grads(model, &eps, &xc, &yc)?;
        total = Some(match total {
            None => g2,
            Some(mut acc) => {
                for (k, v) in acc.iter_mut() {
                    *v = (&*v + &g2[k])?;
                }
                acc
            }
        });
    }
    let mut grads = total.expect("at least one chunk");
    if chunks > 1 {
        for v in grads.values_mut() {
            *v = (&*v / chunks as f64)?;
        }
    }
    opt.step(&model.params, &grads, lr)?;
    Ok(StepOutput {
        method: Method::Sam,
        loss,
        correct,
        samples: n,
        passes: Method::Sam.cost(),
    })
}
