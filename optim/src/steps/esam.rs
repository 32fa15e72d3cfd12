//! ESAM (Du, Yan, Feng, Zhou, Zhen, Goh and Tan, "Efficient
//! Sharpness-aware Minimization for Improved Training of Neural Networks",
//! ICLR 2022): SAM with stochastic weight perturbation (SWP, `beta`) and
//! sharpness-sensitive data selection (SDS, `gamma`), as the official code
//! computes them: dydjw9/Efficient_SAM `utils/Esam.py` (`ESAM.step`,
//! `first_step`, `second_step`) and `run.sh`, commit
//! 1e06840c466beaebfafb049096d6a1733cb77a8c.
//!
//! A step, with `c` the kind's own step counter (0 at its first step):
//! 1. **SWP mask**, over whole parameter tensors (the official code freezes
//!    each tensor with probability `1 - beta` at the end of a step for the
//!    next one; the paper writes a per-entry mask): trainable tensor `i`
//!    (0-based position in the sorted trainable names) is kept iff `c == 0`
//!    or `beta >= 1` or [`swp_keep`]`(seed, c, i, beta)`, a splitmix64 hash
//!    of the kind's `seed`, `c` and `i` (one mask per step, the same for
//!    every chunk). The first step perturbs every tensor, as the official
//!    code's.
//! 2. Per m-sharpness chunk (the whole batch without chunks), a first pass
//!    at `w` (training mode; it alone updates the BatchNorm running
//!    statistics, as SAM's): per-sample losses `l_i` and the gradient `g`
//!    of their mean (`+ wd w` where the decay is in the loss); `g_m` is `g`
//!    on kept tensors and 0 on the others.
//! 3. `eps = (rho / beta) g_m / (||g_m|| + 1e-12)` (the official `1 /
//!    beta` scaling; SAM's scope applies).
//! 4. **SDS**: with `gamma >= 0.99` every sample (the official rule). Else
//!    a forward-only training-mode pass at `w + eps` over the chunk (its
//!    statistics dropped) gives `l'_i`, the rises `s_i = l'_i - l_i`,
//!    `p = floor(gamma n_c)` (at least 2) and the kept samples `B+ = {i :
//!    s_i > the p-th largest s}` (the official `torch.topk` cutoff with a
//!    strict `>`: `p - 1` samples when no rises tie, where the paper says
//!    `gamma n`).
//! 5. `g_s` at `w + eps` of the mean loss over `B+` (one BatchNorm group,
//!    statistics dropped; `+ wd (w + eps)` where the decay is in the loss).
//! 6. The base optimiser steps with the mean over chunks of `g_s`.
//!
//! Deliberate differences from the official code (the reference's
//! "note"): `1e-12` in the perturbation's denominator, not `1e-7`, so
//! `beta = gamma = 1` is SAM bit for bit; the mask from the hash and the
//! kind's seed, not Python's `random`; the selection forward and the second
//! pass do not update the running statistics (the official code never
//! disables them); the selection forward is skipped where `gamma >= 0.99`
//! (the official code runs it and ignores it); m-sharpness chunks play the
//! official code's data-parallel processes (each perturbs and selects on
//! its own part, the same mask for all). With `gamma < 0.99` ghost
//! batches must be at least the chunk (each chunk one BatchNorm group): a
//! selected subset has no defined split into ghost batches. Steps 2-6 are
//! SAM's chunk loop (the passes of `crate::sam`) with the masked, rescaled
//! perturbation and, where `gamma < 0.99`, SDS choosing each chunk's
//! second-pass samples; with `gamma >= 0.99` that is all of them, and ESAM
//! takes every ghost batch SAM takes. ASAM scaling (`sam.adaptive`) is
//! refused: the official code's adaptive variant (`w^2 g`) is not samlab's
//! ASAM, and no reference checks their composition.
//!
//! **Cost.** A step reports in `passes` the forward+backward passes it ran,
//! in batch units: `1 + sum_c |B+_c| / n` (2 with `gamma >= 0.99`). The
//! planned cost is `1 + gamma` (2 for `gamma >= 0.99`): the first pass plus
//! the second on about `gamma` of the batch (the official rule keeps
//! `floor(gamma n_c) - 1` of `n_c`, within `2 / n_c` below `gamma`).
//! Neither counts the forward-only selection pass (one forward over the
//! batch where `gamma < 0.99`) or what SWP saves (the frozen tensors'
//! first-pass weight gradients, which the official code skips): those
//! show in wall time, not in passes. `perturbed_correct` counts the
//! selected samples' correct predictions at `w + eps`.
//!
//! Settings: `beta` in (0, 1], `gamma` in (0, 1], `seed` (the mask
//! stream). Defaults `beta = 0.6`, `gamma = 0.5`: `run.sh`'s CIFAR-10/100
//! ResNet-18 lines (with rho 0.05; its WideResNet lines use 0.5 / 0.5 with
//! rho 0.1), seed 0. State: the step counter, saved with the trainer so a
//! resumed run draws the same masks; under a switch or PSAM it counts this
//! kind's steps only. Test reference:
//! `optim/tests/reference/gen_esam_reference.py` (JAX, f64).

use std::collections::BTreeMap;

use candle_core::Tensor;
use samlab_models::Model;
use serde::{Deserialize, Serialize};

use super::{
    Method, RunShape, StepCtx, StepKind, StepOutput, StepSettings, counter_tensor, read_counter,
    sam_output,
};
use crate::error::{Result, bad};
use crate::sam::{
    Chunk, at_perturbed, loss_decay, perturbation_along, rollback_on_error, sam_chunks,
    sample_losses, update,
};
use crate::sgd::Grads;

/// Where SDS is off: the official code selects every sample from here up.
const ALL_SAMPLES: f64 = 0.99;

/// ESAM's own settings (rho, chunks and the scope come from SAM's settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EsamSettings {
    /// SWP: the probability a parameter tensor is perturbed (1: every one).
    pub beta: f64,
    /// SDS: the fraction of each chunk the second pass covers (>= 0.99:
    /// all of it).
    pub gamma: f64,
    /// The seed of the SWP mask stream.
    pub seed: u64,
}

impl Default for EsamSettings {
    fn default() -> Self {
        EsamSettings {
            beta: 0.6,
            gamma: 0.5,
            seed: 0,
        }
    }
}

/// The state: ESAM steps taken (the mask's step index), and what the last
/// step in this process selected (for inspection; not saved).
#[derive(Debug, Default)]
pub struct Esam {
    steps: u64,
    selected: Vec<Vec<usize>>,
    rises: Vec<Option<Vec<f64>>>,
}

impl Esam {
    /// Steps of this kind taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The last step's selected samples, per chunk, as indices within the
    /// chunk (empty before a step in this process).
    pub fn last_selected(&self) -> &[Vec<usize>] {
        &self.selected
    }

    /// The last step's loss rises `l(w + eps) - l(w)`, per chunk (`None`
    /// where `gamma >= 0.99`: not computed).
    pub fn last_rises(&self) -> &[Option<Vec<f64>>] {
        &self.rises
    }
}

/// splitmix64's output for state `x` (Steele, Lea and Flood 2014).
pub fn splitmix64(x: u64) -> u64 {
    let z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether SWP keeps tensor `index` at the kind's step `step` (`step > 0`;
/// the first step keeps every tensor): with probability `beta`, from
/// `splitmix64(splitmix64(splitmix64(seed) ^ step) ^ index)` below
/// `beta 2^64` (exact in f64; the conversion truncates).
pub fn swp_keep(seed: u64, step: u64, index: u64, beta: f64) -> bool {
    if beta >= 1.0 {
        return true;
    }
    let h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ index);
    h < (beta * 2f64.powi(64)) as u64
}

/// The indices of the tensors (of `tensors`, in sorted-name order) SWP
/// keeps at the kind's step `step`.
pub fn kept_tensors(s: &EsamSettings, step: u64, tensors: usize) -> Vec<usize> {
    (0..tensors)
        .filter(|&i| step == 0 || swp_keep(s.seed, step, i as u64, s.beta))
        .collect()
}

/// `p = floor(gamma n)`, the official topk position (f64 product, truncated
/// as Python's `int`).
fn position(gamma: f64, n: usize) -> usize {
    (n as f64 * gamma) as usize
}

/// The official SDS rule on a chunk's rises: the indices whose rise is
/// strictly above the `p`-th largest (ties counted, as `torch.topk`).
fn select(rises: &[f64], p: usize) -> Vec<usize> {
    let mut sorted = rises.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cutoff = sorted[p - 1];
    (0..rises.len()).filter(|&i| rises[i] > cutoff).collect()
}

/// Per-sample losses of a forward-only training-mode pass at `w + eps`;
/// the weights and the running statistics are put back exactly.
fn losses_at(model: &Model, eps: &Grads, x: &Tensor, y: &Tensor) -> Result<Vec<f64>> {
    let buffers = model.params.snapshot_buffers()?;
    let losses = at_perturbed(&model.params, eps, || {
        sample_losses(&samlab_models::label_log_probs(
            &model.forward(x, true)?,
            y,
        )?)
    });
    model.params.restore_buffers(&buffers)?;
    losses
}

/// `g` on the kept tensors, zero on the others (`g` itself where all are
/// kept).
fn masked(g: &Grads, kept: &[bool], names: &[String]) -> Result<Grads> {
    if kept.iter().all(|k| *k) {
        return Ok(g.clone());
    }
    let mut out = g.clone();
    for (name, keep) in names.iter().zip(kept) {
        if !keep && let Some(t) = out.get_mut(name) {
            *t = t.zeros_like()?;
        }
    }
    Ok(out)
}

impl StepKind for Esam {
    type Settings = EsamSettings;
    const USES_SAM: bool = true;
    // Its second pass takes the samples its selection keeps.
    const DATA_DEPENDENT_PASSES: bool = true;

    fn check(s: &EsamSettings) -> Result<()> {
        if !(s.beta > 0.0 && s.beta <= 1.0) {
            return Err(bad(format!(
                "ESAM's beta must be in (0, 1], got {}",
                s.beta
            )));
        }
        if !(s.gamma > 0.0 && s.gamma <= 1.0) {
            return Err(bad(format!(
                "ESAM's gamma must be in (0, 1], got {}",
                s.gamma
            )));
        }
        Ok(())
    }

    fn check_run(s: &EsamSettings, run: &RunShape) -> Result<()> {
        let (sam, bn_batch) = (run.settings.sam, run.settings.bn_batch);
        if sam.adaptive {
            return Err(bad(
                "ESAM does not take ASAM scaling (the official code's adaptive variant is not samlab's ASAM): sam.adaptive must be false",
            ));
        }
        if s.gamma >= ALL_SAMPLES {
            return Ok(());
        }
        // SDS selects within each chunk, or within the batch without one.
        let group = match (sam.chunk, run.batch) {
            (Some(m), _) => Some(("a chunk", m)),
            (None, Some(b)) => Some(("a batch", b)),
            (None, None) => None,
        };
        if let Some((what, m)) = group {
            let p = position(s.gamma, m);
            if p <= 1 {
                return Err(bad(format!(
                    "ESAM's gamma {} selects no sample of {what} of {m} (floor(gamma * {m}) = {p}; the official rule keeps the samples above the floor(gamma n)-th largest rise, so it needs at least 2)",
                    s.gamma
                )));
            }
        }
        if let Some(m) = sam.chunk
            && let Some(b) = bn_batch.filter(|&b| b < m)
        {
            return Err(bad(format!(
                "ESAM with gamma {} < 0.99 needs ghost batches of at least the chunk: bn_batch {b} is below sam.chunk {m} (a selected subset has no split into ghost batches)",
                s.gamma
            )));
        }
        Ok(())
    }

    fn cost(s: &EsamSettings) -> f64 {
        if s.gamma >= ALL_SAMPLES {
            2.0
        } else {
            1.0 + s.gamma
        }
    }

    fn step(&mut self, s: &EsamSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        Self::check(s)?;
        c.settings.sam.check()?;
        Self::check_run(s, &c.shape()?)?;
        let StepCtx {
            model,
            opt,
            settings: StepSettings { sam, bn_batch, .. },
            x,
            y,
            lr,
        } = c;
        let n = y.dim(0)?;
        let m = sam.chunk.unwrap_or(n).min(n);
        let select_data = s.gamma < ALL_SAMPLES;
        // check_run, with this batch, refused a chunk or batch of which
        // gamma selects no sample.
        if select_data && let Some(b) = bn_batch.filter(|&b| b < m) {
            return Err(bad(format!(
                "ESAM with gamma {} < 0.99 needs ghost batches of at least the chunk: bn_batch {b} is below the chunk of {m}",
                s.gamma
            )));
        }
        let mut names: Vec<String> = model
            .params
            .trainable()
            .map(|(k, _)| k.to_string())
            .collect();
        names.sort();
        let mut kept = vec![false; names.len()];
        for i in kept_tensors(s, self.steps, names.len()) {
            kept[i] = true;
        }
        let rho = sam.rho / s.beta;
        // SDS (step 4 of the module docs): the samples whose loss rises
        // most at `w + eps`.
        let p = position(s.gamma, m);
        let (mut selected, mut rises) = (Vec::new(), Vec::new());
        let mut sds = |c: Chunk<'_>| -> Result<Vec<usize>> {
            let after = losses_at(model, c.eps, c.x, c.y)?;
            let r: Vec<f64> = after.iter().zip(&c.losses).map(|(a, b)| a - b).collect();
            let idx = select(&r, p);
            if idx.is_empty() {
                return Err(bad(format!(
                    "ESAM selected no sample of chunk {}: its {p} largest loss rises tie (rises {r:?}; rho = 0?)",
                    c.index
                )));
            }
            selected.push(idx.clone());
            rises.push(Some(r));
            Ok(idx)
        };
        let out = rollback_on_error(model, || {
            let r = sam_chunks(
                model,
                sam,
                bn_batch,
                loss_decay(opt),
                x,
                y,
                |p, g| perturbation_along(p, &masked(g, &kept, &names)?, sam, rho, 1e-12),
                select_data.then_some(&mut sds),
                |_, gs| Ok((gs, None)),
            )?;
            update(model, opt, &r.perturbed, lr)?;
            Ok(sam_output(Method::Esam, &r, n))
        })?;
        if !select_data {
            let chunks = n / m;
            selected = vec![(0..m).collect(); chunks];
            rises = vec![None; chunks];
        }
        self.selected = selected;
        self.rises = rises;
        self.steps += 1;
        Ok(out)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        if self.steps == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![("steps".to_string(), counter_tensor(self.steps)?)])
    }

    fn load_state(&mut self, mut tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let steps = match tensors.remove("steps") {
            Some(t) => read_counter(&t)?,
            None => 0,
        };
        if let Some(k) = tensors.keys().next() {
            return Err(bad(format!("unexpected tensor `{k}`")));
        }
        *self = Esam {
            steps,
            ..Esam::default()
        };
        Ok(())
    }
}
