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
//! **Scope** ([`Scope::Norm`], SAM-ON): every perturbing kind moves only
//! the normalisation layers' parameters, with the norm over those alone.
//! **rho schedules** ([`RhoSchedule`]): the trainer hands each step rho at
//! that step; a step kind reads one rho.
//!
//! A step that fails (a NaN or infinite loss, say) changes nothing: the
//! update comes last, and the running statistics of its passes are put back.
//!
//! This module holds SAM's settings and the passes the perturbing step kinds
//! build on; the steps themselves (`sam_step`, `sgd_step`, what a step did)
//! live with their kinds in [`crate::steps`], which this module does not import.
//!
//! With m-sharpness (`chunk = Some(m)`, m dividing the batch) steps 1-3 run
//! per chunk of m samples, each with its own `eps`, and `g'` is the mean of
//! the chunks' second-pass gradients. Without ghost batches each chunk's
//! first pass updates the running statistics in turn. The kinds built on
//! this loop choose the perturbation and how a chunk's two gradients make
//! its direction; one (ESAM) also chooses which of a chunk's samples the
//! second pass covers, from the chunk's first-pass losses.
//!
//! **Ghost batches** (`bn_batch = Some(b)`, [`StepSettings`](crate::StepSettings)): every pass,
//! of SGD and SAM steps alike, runs as devices that each hold `b` images
//! would run it (the thesis' 8 GPUs of 32 images, Section 5.1): BatchNorm
//! normalises over each slice of `b` images, each slice's gradient is
//! taken of its own mean loss and the step's gradient is their mean (an
//! all-reduce), and the running statistics are updated once per step: each
//! slice updates them from the step's starting values and the step keeps
//! the mean of those updates, i.e. one update with the slices' mean
//! statistics (cross-device averaged BatchNorm state). With SAM, `b` must
//! divide the chunk m (a device's perturbation covers its own images).

use candle_core::{Tensor, Var};
use samlab_models::{Model, ParamStore, label_log_probs};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, bad};
use crate::sgd::{Decay, Grads, Sgd, collect_grads};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamConfig {
    /// Radius of the perturbation (with a [`RhoSchedule`]: its value at
    /// the run's first step).
    pub rho: f64,
    /// m-sharpness: the chunk size m (`None`: the whole batch).
    pub chunk: Option<usize>,
    /// Adaptive SAM: scale the perturbation by |w| + eta.
    pub adaptive: bool,
    /// ASAM's eta.
    pub eta: f64,
    /// Which parameters are perturbed (SAM-ON: the normalisation layers'
    /// only); left out of serialised settings at `All`, so keys written
    /// before there was a choice stay as they were.
    #[serde(default, skip_serializing_if = "Scope::is_all")]
    pub scope: Scope,
    /// How rho changes over the run; left out at `Constant` (as `scope`).
    #[serde(default, skip_serializing_if = "RhoSchedule::is_constant")]
    pub rho_schedule: RhoSchedule,
}

/// Which parameters a perturbing step perturbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every trainable parameter.
    #[default]
    All,
    /// SAM-ON (Mueller, Vlaar, Rolnick and Hein, "Normalization Layers Are
    /// All That Sharpness-Aware Minimization Needs", NeurIPS 2023): only
    /// the normalisation layers' affine parameters, found by structure (a
    /// `P.weight` or `P.bias` whose layer `P` keeps a `P.running_mean`
    /// buffer: every BatchNorm, `bn*` and ResNet's `shortcut.1` alike);
    /// the perturbation's norm runs over those parameters alone.
    Norm,
}

impl Scope {
    fn is_all(&self) -> bool {
        *self == Scope::All
    }
}

/// rho as a function of the run's progress (`t / T`, T the run's total
/// steps, as the cosine learning rate counts it) and of the learning rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum RhoSchedule {
    /// `rho` at every step.
    #[default]
    Constant,
    /// From `rho` at step 0 to `to` at step T, linearly: `rho + (to - rho) t / T`.
    Linear { to: f64 },
    /// From `rho` to `to` as the cosine learning rate falls:
    /// `to + (rho - to) (1 + cos(pi t / T)) / 2`.
    Cosine { to: f64 },
    /// GSAM's rule (Zhuang et al., ICLR 2022, Section 5.1; the authors'
    /// `ProportionScheduler`): rho proportional to the learning rate,
    /// `min + (rho - min) (lr_t - lr_min) / (lr_max - lr_min)`, with
    /// `lr_max` and `lr_min` the schedule's largest and smallest rates
    /// (cosine: `lr` and 0); `rho` where the rate is constant.
    LrProportional { min: f64 },
}

impl RhoSchedule {
    fn is_constant(&self) -> bool {
        *self == RhoSchedule::Constant
    }
}

/// Where a run is, for [`SamConfig::at`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// The global step.
    pub step: u64,
    /// The run's total steps.
    pub total_steps: u64,
    /// The learning rate at this step.
    pub lr: f64,
    /// The learning-rate schedule's largest and smallest rates.
    pub lr_max: f64,
    pub lr_min: f64,
}

impl SamConfig {
    pub fn new(rho: f64) -> Self {
        SamConfig {
            rho,
            chunk: None,
            adaptive: false,
            eta: 0.01,
            scope: Scope::All,
            rho_schedule: RhoSchedule::Constant,
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
        let (what, end) = match self.rho_schedule {
            RhoSchedule::Constant => return Ok(()),
            RhoSchedule::Linear { to } => ("Linear's `to`", to),
            RhoSchedule::Cosine { to } => ("Cosine's `to`", to),
            RhoSchedule::LrProportional { min } => ("LrProportional's `min`", min),
        };
        if !(end >= 0.0 && end.is_finite()) {
            return Err(bad(format!(
                "rho_schedule: {what} must be finite and >= 0, got {end}"
            )));
        }
        if matches!(self.rho_schedule, RhoSchedule::LrProportional { .. }) && end > self.rho {
            return Err(bad(format!(
                "rho_schedule: LrProportional's `min` {end} is above rho {} (rho is the radius at the largest learning rate)",
                self.rho
            )));
        }
        Ok(())
    }

    /// The trainable parameters a perturbation under these settings moves
    /// (every one, or under [`Scope::Norm`] the normalisation layers'), in
    /// name order.
    pub fn perturbed_names(&self, params: &ParamStore) -> Vec<String> {
        scoped(params, self.scope)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// rho at a point of the run, as the schedule says.
    pub fn rho_at(&self, p: Progress) -> f64 {
        let frac = p.step as f64 / p.total_steps.max(1) as f64;
        match self.rho_schedule {
            RhoSchedule::Constant => self.rho,
            RhoSchedule::Linear { to } => self.rho + (to - self.rho) * frac,
            RhoSchedule::Cosine { to } => {
                to + (self.rho - to) * (1.0 + (std::f64::consts::PI * frac).cos()) / 2.0
            }
            RhoSchedule::LrProportional { min } => {
                if p.lr_max > p.lr_min {
                    min + (self.rho - min) * (p.lr - p.lr_min) / (p.lr_max - p.lr_min)
                } else {
                    self.rho
                }
            }
        }
    }

    /// The settings of one step: `rho` at `p` as the schedule says (the
    /// same settings where it is constant).
    pub fn at(&self, p: Progress) -> SamConfig {
        SamConfig {
            rho: self.rho_at(p),
            ..self.clone()
        }
    }
}

/// The per-sample losses from [`label_log_probs`]' log-probabilities, in f64.
pub(crate) fn sample_losses(picked: &Tensor) -> Result<Vec<f64>> {
    Ok(picked
        .neg()?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// Loss, number of correct predictions and gradients of one training-mode
/// pass, and the labels' log-probabilities ([`label_log_probs`], detached).
fn pass_picked(model: &Model, x: &Tensor, y: &Tensor) -> Result<(f64, usize, Grads, Tensor)> {
    let logits = model.forward(x, true)?;
    let picked = label_log_probs(&logits, y)?;
    // samlab_models::cross_entropy(&logits, y), keeping its terms.
    let loss = picked.mean_all()?.neg()?;
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
    Ok((value, correct, grads, picked.detach()))
}

/// Loss, number of correct predictions and gradients of one training-mode pass.
fn pass(model: &Model, x: &Tensor, y: &Tensor) -> Result<(f64, usize, Grads)> {
    let (loss, correct, grads, _) = pass_picked(model, x, y)?;
    Ok((loss, correct, grads))
}

/// The gradient of the loss plus `0.5 wd ||w + eps||^2`: `g + wd (w + eps)`
/// (`eps` absent, or absent for a parameter: at `w`).
pub(crate) fn with_decay(
    params: &ParamStore,
    mut g: Grads,
    wd: f64,
    eps: Option<&Grads>,
) -> Result<Grads> {
    if wd == 0.0 {
        return Ok(g);
    }
    for (name, var) in params.trainable() {
        let w = var.as_tensor().detach();
        let at = match eps.and_then(|e| e.get(name)) {
            Some(e) => (&w + e)?,
            None => w,
        };
        let v = g
            .get_mut(name)
            .ok_or_else(|| bad(format!("no gradient for `{name}`")))?;
        *v = (&*v + (at * wd)?)?;
    }
    Ok(g)
}

/// `acc + g` by name (`acc` empty: `g`).
pub(crate) fn add_grads(acc: Option<Grads>, g: Grads) -> Result<Grads> {
    Ok(match acc {
        None => g,
        Some(mut acc) => {
            for (k, v) in acc.iter_mut() {
                *v = (&*v + &g[k])?;
            }
            acc
        }
    })
}

/// `g / n` by name.
pub(crate) fn mean_grads(mut g: Grads, n: usize) -> Result<Grads> {
    if n > 1 {
        for v in g.values_mut() {
            *v = (&*v / n as f64)?;
        }
    }
    Ok(g)
}

/// Rows `[i * len, (i + 1) * len)` of the batch (the batch itself when it
/// is one part).
pub(crate) fn part(x: &Tensor, y: &Tensor, i: usize, len: usize) -> Result<(Tensor, Tensor)> {
    if i == 0 && len == y.dim(0)? {
        return Ok((x.clone(), y.clone()));
    }
    Ok((x.narrow(0, i * len, len)?, y.narrow(0, i * len, len)?))
}

/// How many parts of `len` make `n`, or why they do not.
pub(crate) fn parts(n: usize, len: usize, what: &str) -> Result<usize> {
    if len == 0 || !n.is_multiple_of(len) {
        return Err(bad(format!(
            "{what} {len} does not divide the batch of {n}"
        )));
    }
    Ok(n / len)
}

/// The mean of snapshots of the running statistics (one update per step:
/// the mean of the updates each slice or chunk made from the same start).
pub(crate) fn mean_buffers(snapshots: &[Vec<Tensor>]) -> Result<Vec<Tensor>> {
    let n = snapshots.len() as f64;
    (0..snapshots[0].len())
        .map(|i| {
            let sum = snapshots[1..]
                .iter()
                .try_fold(snapshots[0][i].clone(), |acc, s| &acc + &s[i])?;
            Ok((sum / n)?)
        })
        .collect()
}

/// A training-mode pass over (x, y) in ghost batches of `b` images (see
/// the module docs): the mean loss, the correct predictions, the mean
/// gradient; the running statistics are left at the mean of the slices'
/// updates from their values on entry. `None`: one [`pass`].
pub(crate) fn ghost_pass(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    b: Option<usize>,
) -> Result<(f64, usize, Grads)> {
    let n = y.dim(0)?;
    let Some(b) = b.filter(|&b| b < n) else {
        return pass(model, x, y);
    };
    let slices = parts(n, b, "the BatchNorm batch (bn_batch)")?;
    let params = &model.params;
    let start = params.snapshot_buffers()?;
    let (mut loss, mut correct) = (0f64, 0usize);
    let mut grads: Option<Grads> = None;
    let mut running: Vec<Vec<Tensor>> = Vec::with_capacity(slices);
    for s in 0..slices {
        params.restore_buffers(&start)?;
        let (xs, ys) = part(x, y, s, b)?;
        let (l, k, g) = pass(model, &xs, &ys)?;
        loss += l / slices as f64;
        correct += k;
        grads = Some(add_grads(grads, g)?);
        running.push(params.snapshot_buffers()?);
    }
    params.restore_buffers(&mean_buffers(&running)?)?;
    Ok((
        loss,
        correct,
        mean_grads(grads.expect("at least one slice"), slices)?,
    ))
}

/// Runs one step; if it fails, puts back the running statistics its passes
/// changed. Weights and momentum change only in the step's final update, so
/// a failed step leaves the model and the optimiser as they were.
pub(crate) fn rollback_on_error<T>(model: &Model, step: impl FnOnce() -> Result<T>) -> Result<T> {
    // Running statistics are a few floats per channel: cheap to keep.
    let buffers = model.params.snapshot_buffers()?;
    let out = step();
    if out.is_err() {
        model.params.restore_buffers(&buffers)?;
    }
    out
}

/// The parameters a perturbation covers: every trainable one, or (SAM-ON)
/// those of the normalisation layers ([`Scope`]), in name order.
pub(crate) fn scoped(params: &ParamStore, scope: Scope) -> Vec<(&str, &Var)> {
    match scope {
        Scope::All => params.trainable().collect(),
        Scope::Norm => {
            let norms: std::collections::BTreeSet<&str> = params
                .buffers()
                .filter_map(|(n, _)| n.strip_suffix(".running_mean"))
                .collect();
            params
                .trainable()
                .filter(|(n, _)| {
                    n.rsplit_once('.').is_some_and(|(layer, p)| {
                        (p == "weight" || p == "bias") && norms.contains(layer)
                    })
                })
                .collect()
        }
    }
}

/// The perturbation for gradient `g` at the current weights.
pub(crate) fn perturbation(params: &ParamStore, g: &Grads, cfg: &SamConfig) -> Result<Grads> {
    perturbation_along(params, g, cfg, cfg.rho, 1e-12)
}

/// `rho T^2 d / (||T d|| + tiny)` over the parameters of `cfg.scope` (`T`:
/// ASAM's `|w| + eta` on weights where `cfg.adaptive`, else 1); the
/// parameters outside the scope have no entry (they are not moved).
pub(crate) fn perturbation_along(
    params: &ParamStore,
    d: &Grads,
    cfg: &SamConfig,
    rho: f64,
    tiny: f64,
) -> Result<Grads> {
    let mut scaled = Grads::new();
    let mut sq = 0f64;
    for (name, var) in scoped(params, cfg.scope) {
        let gi = d
            .get(name)
            .ok_or_else(|| bad(format!("no direction for `{name}`")))?;
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
    let scale = rho / (sq.sqrt() + tiny);
    for v in scaled.values_mut() {
        *v = (&*v * scale)?;
    }
    Ok(scaled)
}

/// Runs `f` with the weights at `w + eps` (`eps` absent for a parameter:
/// not moved) and puts `w` back exactly, whatever `f` gives.
pub(crate) fn at_perturbed<T>(
    params: &ParamStore,
    eps: &Grads,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let originals: Vec<Tensor> = params
        .trainable()
        .map(|(_, v)| v.as_tensor().detach().copy())
        .collect::<candle_core::Result<_>>()?;
    let moved = params
        .trainable()
        .try_for_each(|(name, var)| -> Result<()> {
            if let Some(e) = eps.get(name) {
                var.set(&(var.as_tensor().detach() + e)?)?;
            }
            Ok(())
        });
    let out = moved.and_then(|()| f());
    for ((_, var), w) in params.trainable().zip(&originals) {
        var.set(w)?;
    }
    out
}

/// Runs a pass at `w + eps` (`eps` absent for a parameter: not moved) and
/// puts `w` and the running statistics back exactly.
pub(crate) fn perturbed_grads(
    model: &Model,
    eps: &Grads,
    x: &Tensor,
    y: &Tensor,
    bn_batch: Option<usize>,
) -> Result<(usize, Grads)> {
    let buffers = model.params.snapshot_buffers()?;
    let result = at_perturbed(&model.params, eps, || ghost_pass(model, x, y, bn_batch));
    model.params.restore_buffers(&buffers)?;
    let (_, correct, grads) = result?;
    Ok((correct, grads))
}

/// A training-mode pass at `w + eps` (`eps` absent for a parameter: not
/// moved) whose running statistics are kept (the step's only pass, as
/// Momentum-SAM's); `w` is put back exactly.
pub(crate) fn pass_at(
    model: &Model,
    eps: &Grads,
    x: &Tensor,
    y: &Tensor,
    bn_batch: Option<usize>,
) -> Result<(f64, usize, Grads)> {
    at_perturbed(&model.params, eps, || ghost_pass(model, x, y, bn_batch))
}

/// What SAM's passes give on a batch, before any update (module docs).
pub(crate) struct SamGradient {
    /// Mean first-pass loss.
    pub loss: f64,
    pub correct: usize,
    pub perturbed_correct: usize,
    /// The mean of the chunks' directions, as `combine` made them (SAM's:
    /// the gradients at `w + eps`, with the decay term where the weight
    /// decay is in the loss): what the step updates with.
    pub perturbed: Grads,
    /// The mean of what `combine` kept beside each direction, where it
    /// kept something (most kinds: the chunk's first-pass gradient).
    pub kept: Option<Grads>,
    /// The samples the second passes covered (the batch, unless a
    /// selection chose fewer).
    pub second_samples: usize,
}

/// Weight decay in the loss of both passes (`Decay::Loss`): its rate.
pub(crate) fn loss_decay(opt: &Sgd) -> Option<f64> {
    (opt.config.decay == Decay::Loss).then_some(opt.config.weight_decay)
}

/// A chunk as [`sam_chunks`] hands it to a selection, after its first pass
/// and its perturbation.
pub(crate) struct Chunk<'a> {
    /// Its place among the batch's chunks (0-based).
    pub index: usize,
    pub x: &'a Tensor,
    pub y: &'a Tensor,
    pub eps: &'a Grads,
    /// The first pass's per-sample losses at `w`.
    pub losses: Vec<f64>,
}

/// Which samples of a chunk its second pass covers: their indices within
/// the chunk (ESAM's data selection).
pub(crate) type Select<'s> = &'s mut dyn FnMut(Chunk<'_>) -> Result<Vec<usize>>;

/// The chunk loop of a SAM-type step on (x, y) (module docs): per chunk of
/// m samples, a first pass at `w` (gradient `g`, with the decay term where
/// the decay is in the loss), `eps = perturb(g)`, a pass at `w + eps`
/// (`g2`, likewise) and `combine(g, g2)`: the chunk's direction and what
/// the kind keeps beside it, if anything; [`SamGradient`] holds the means
/// over the chunks. With `select`, the second pass covers only the samples it picks
/// from the [`Chunk`] (one BatchNorm group: `select` needs each chunk
/// within one ghost batch). The weights are left as they were, the running
/// statistics as the first passes leave them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sam_chunks(
    model: &Model,
    cfg: &SamConfig,
    bn_batch: Option<usize>,
    loss_decay: Option<f64>,
    x: &Tensor,
    y: &Tensor,
    mut perturb: impl FnMut(&ParamStore, &Grads) -> Result<Grads>,
    mut select: Option<Select<'_>>,
    mut combine: impl FnMut(Grads, Grads) -> Result<(Grads, Option<Grads>)>,
) -> Result<SamGradient> {
    let n = y.dim(0)?;
    let m = cfg.chunk.unwrap_or(n).min(n);
    let chunks = parts(n, m, "the m-sharpness chunk")?;
    if let Some(b) = bn_batch.filter(|&b| b < m) {
        if select.is_some() {
            return Err(bad(format!(
                "a selection of samples needs each chunk within one ghost batch: bn_batch {b} is below the chunk of {m}"
            )));
        }
        parts(m, b, "the BatchNorm batch (bn_batch)")?;
    }
    // With ghost batches every chunk starts from the step's running
    // statistics, and the step keeps the mean of the chunks' updates.
    let start = bn_batch
        .map(|_| model.params.snapshot_buffers())
        .transpose()?;
    let mut running: Vec<Vec<Tensor>> = Vec::new();
    let (mut loss, mut correct, mut perturbed_correct) = (0f64, 0usize, 0usize);
    let mut second_samples = 0;
    let mut total: Option<Grads> = None;
    let mut kept_total: Option<Grads> = None;
    for c in 0..chunks {
        let (xc, yc) = part(x, y, c, m)?;
        if let Some(start) = &start {
            model.params.restore_buffers(start)?;
        }
        // A selection's chunk is one BatchNorm group: one pass, which also
        // gives the per-sample losses (none kept without a selection).
        let (l, k, g, losses) = if select.is_some() {
            let (l, k, g, picked) = pass_picked(model, &xc, &yc)?;
            (l, k, g, sample_losses(&picked)?)
        } else {
            let (l, k, g) = ghost_pass(model, &xc, &yc, bn_batch)?;
            (l, k, g, Vec::new())
        };
        if start.is_some() {
            running.push(model.params.snapshot_buffers()?);
        }
        loss += l / chunks as f64;
        correct += k;
        let g = match loss_decay {
            Some(wd) => with_decay(&model.params, g, wd, None)?,
            None => g,
        };
        let eps = perturb(&model.params, &g)?;
        let (xs, ys) = match select.as_deref_mut() {
            None => (xc, yc),
            Some(select) => {
                let idx = select(Chunk {
                    index: c,
                    x: &xc,
                    y: &yc,
                    eps: &eps,
                    losses,
                })?;
                let ids = Tensor::new(
                    idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    xc.device(),
                )?;
                (xc.index_select(&ids, 0)?, yc.index_select(&ids, 0)?)
            }
        };
        let (k2, g2) = perturbed_grads(model, &eps, &xs, &ys, bn_batch)?;
        let g2 = match loss_decay {
            Some(wd) => with_decay(&model.params, g2, wd, Some(&eps))?,
            None => g2,
        };
        perturbed_correct += k2;
        second_samples += ys.dim(0)?;
        let (dir, keep) = combine(g, g2)?;
        if let Some(g) = keep {
            kept_total = Some(add_grads(kept_total, g)?);
        }
        total = Some(add_grads(total, dir)?);
    }
    if !running.is_empty() {
        model.params.restore_buffers(&mean_buffers(&running)?)?;
    }
    Ok(SamGradient {
        loss,
        correct,
        perturbed_correct,
        perturbed: mean_grads(total.expect("at least one chunk"), chunks)?,
        kept: kept_total.map(|g| mean_grads(g, chunks)).transpose()?,
        second_samples,
    })
}

/// The base optimiser's update with `grads` (the decay term already in
/// them where the weight decay is in the loss).
pub(crate) fn update(model: &Model, opt: &mut Sgd, grads: &Grads, lr: f64) -> Result<()> {
    match loss_decay(opt) {
        None => opt.step(&model.params, grads, lr),
        Some(_) => opt.step_decayed(&model.params, grads, lr),
    }
}
