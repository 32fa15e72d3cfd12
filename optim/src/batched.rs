//! The paper protocol's step as batched passes on one device.
//!
//! The thesis trains with 256 images per step on 8 GPUs of 32 (Section
//! 5.1: "8 RTX 3090 GPUs", "batch size 256 ... m-sharpness ... with
//! m = 32"): BatchNorm normalises each device's 32 images, and SAM
//! perturbs each device's weights along its own gradient. samlab's
//! sequential form ([`crate::sam`]'s `ghost_pass` and `sam_chunks`) runs
//! that as one pass per slice: 8 passes of 32 images for an SGD step, 16
//! for a SAM step. Here the same step runs as one pass over the batch per
//! SAM pass, through [`samlab_models::slices`]:
//!
//! - **SGD with ghost batches** (`sgd_step_with` with `ghost: Batched`): one sliced pass
//!   with the model's own weights; BatchNorm per slice; the gradient of
//!   the mean of the slices' losses is the mean of their gradients.
//! - **SAM** (the SAM kind with `ghost: Batched`, m-sharpness chunks of `m` images,
//!   ghost batches of `b` dividing `m`): the first pass with per-slice
//!   copies of the weights gives every slice's gradient (the gradient of
//!   the sum of the slices' losses with respect to copy `s` is slice `s`'s
//!   own); a chunk's gradient is the mean of its slices', its
//!   perturbation `eps_c` is SAM's (ASAM, SAM-ON's scope and weight decay
//!   in the loss as in the sequential form); the second pass runs every
//!   slice at `w + eps_c` of its chunk, one pass with per-slice weights;
//!   the step's direction is the mean of the chunks' second-pass
//!   gradients. With one chunk the passes need no per-slice weights.
//!
//! The running statistics come from the first pass only, as the mean of
//! the slices' updates from the step's starting values, averaged within
//! each chunk and then over the chunks, the order the sequential form
//! averages them in; a step that fails changes nothing.
//!
//! **What is equal to the sequential form.** The same arithmetic in
//! another order: in f64 the two agree to about 1e-12 relative (sums of a
//! few thousand products, each rounding by 2^-53; tested to 1e-9); in f32
//! they differ as two kernel paths do, by sum order, and where a ReLU
//! input within rounding of zero flips, as chaotic f32 cases do
//! (docs/numerics.md). BatchNorm's per-slice statistics on the CPU in f32
//! sum what each slice's own pass sums, in its order (tested to 1e-5;
//! read as the same bits on this machine's kernel paths).
//!
//! **Why opt-in and where it is chosen.** The batched form changes no
//! result beyond summation order, as a kernel choice does, but its f32
//! trajectories leave the sequential form's bits after the first ReLU
//! flip, so results computed one way are not the other's. A run chooses it
//! by its `ghost` setting ([`GhostForm::Batched`](crate::GhostForm)):
//! `sgd_step_with` and the SAM kind call these functions then, kinds
//! without a batched form ([`StepKind::BATCHED`](crate::StepKind::BATCHED))
//! refuse it, and the runner keys a batched run apart from a sequential
//! one (the sequential default stays out of the key, so no existing key or
//! cached result changes). The convolutions with per-slice weights run per
//! slice inside one op (no grouped kernel exists in candle 0.11.1; see
//! [`samlab_models::slices`]).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use samlab_models::slices::{SliceWeights, Slices};
use samlab_models::{Model, label_log_probs};

use crate::error::{ErrorKind, Result, bad};
use crate::sam::SamGradient;
use crate::sam::{
    SamConfig, add_grads, at_perturbed, ghost_pass, loss_decay, mean_grads, parts, perturbation,
    rollback_on_error, update, with_decay,
};
use crate::sgd::{Grads, Sgd, collect_grads};

/// Images per slice, a device's share: the ghost batch (`bn_batch`), the
/// whole of `n` images where it is unset.
fn slice_size(bn_batch: Option<usize>, n: usize) -> Result<usize> {
    match bn_batch {
        Some(0) => Err(bad("the batched step's bn_batch must be at least 1")),
        Some(b) => Ok(b),
        None => Ok(n),
    }
}

/// One sliced pass's first-pass numbers: each slice's mean loss, the
/// correct predictions, and the gradients (the mean gradient with the
/// model's own weights, else each slice's own).
struct Pass {
    losses: Vec<f64>,
    correct: usize,
    grads: Vec<Grads>,
}

/// A training-mode sliced pass over (x, y) in `slices` with `weights`.
fn sliced_pass(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    slices: Slices,
    weights: &SliceWeights,
) -> Result<Pass> {
    let n = y.dim(0)?;
    let logits = model.forward_sliced(x, slices, weights)?;
    let picked = label_log_probs(&logits, y)?;
    let per = picked
        .reshape((slices.count, n / slices.count))?
        .mean(1)?
        .neg()?;
    let losses = per.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    if let Some(&loss) = losses.iter().find(|l| !l.is_finite()) {
        return Err(ErrorKind::NonFinite { step: 0, loss }.into());
    }
    let correct = logits
        .argmax(1)?
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    let grads = if weights.vars().is_empty() {
        vec![collect_grads(&model.params, &per.mean_all()?.backward()?)?]
    } else {
        let store = per.sum_all()?.backward()?;
        let mut rows = BTreeMap::new();
        for (name, var) in weights.vars() {
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.detach(),
                None => var.as_tensor().zeros_like()?,
            };
            rows.insert(name.clone(), g);
        }
        (0..slices.count)
            .map(|s| {
                rows.iter()
                    .map(|(k, g)| Ok((k.clone(), g.get(s)?)))
                    .collect::<Result<Grads>>()
            })
            .collect::<Result<_>>()?
    };
    Ok(Pass {
        losses,
        correct,
        grads,
    })
}

/// `sum l / len` over `ls` in order from 0: the sequential form's mean
/// loss over slices or chunks.
fn mean_loss(ls: &[f64]) -> f64 {
    ls.iter().fold(0f64, |acc, l| acc + l / ls.len() as f64)
}

/// An SGD step on (x, y) with BatchNorm over slices of `bn_batch` images,
/// as one pass (module docs): the sequential form's `sgd_step_with`,
/// batched. Returns the batch's mean loss and correct predictions
/// (`sgd_step_with` makes them a step's output).
pub(crate) fn sgd(
    model: &Model,
    opt: &mut Sgd,
    bn_batch: Option<usize>,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<(f64, usize)> {
    let n = y.dim(0)?;
    let b = slice_size(bn_batch, n)?;
    rollback_on_error(model, || {
        let (loss, correct, grads) = if b >= n {
            ghost_pass(model, x, y, None)?
        } else {
            let count = parts(n, b, "the BatchNorm batch (bn_batch)")?;
            let p = sliced_pass(model, x, y, Slices::new(count), &SliceWeights::shared())?;
            let grads = p.grads.into_iter().next().expect("one mean gradient");
            (mean_loss(&p.losses), p.correct, grads)
        };
        opt.step(&model.params, &grads, lr)?;
        Ok((loss, correct))
    })
}

/// The chunks' mean gradients from per-slice ones, `per_chunk` slices a
/// chunk: the sequential form's `ghost_pass` mean over a chunk's slices.
fn chunk_means(per_slice: Vec<Grads>, per_chunk: usize) -> Result<Vec<Grads>> {
    let mut out = Vec::new();
    let mut it = per_slice.into_iter();
    loop {
        let mut acc: Option<Grads> = None;
        for _ in 0..per_chunk {
            match it.next() {
                Some(g) => acc = Some(add_grads(acc, g)?),
                None => break,
            }
        }
        match acc {
            Some(g) => out.push(mean_grads(g, per_chunk)?),
            None => return Ok(out),
        }
    }
}

/// A SAM step on (x, y) with m-sharpness chunks (`cfg.chunk`, the batch
/// where unset) over ghost batches of `bn_batch` images (at most the
/// chunk, dividing it; the chunk where unset), as two passes (module
/// docs): the sequential form's `sam_step_with`, batched. Returns what the
/// passes gave (the SAM kind makes it a step's output).
pub(crate) fn sam(
    model: &Model,
    opt: &mut Sgd,
    cfg: &SamConfig,
    bn_batch: Option<usize>,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
) -> Result<SamGradient> {
    cfg.check()?;
    let n = y.dim(0)?;
    let m = cfg.chunk.unwrap_or(n).min(n);
    let chunks = parts(n, m, "the m-sharpness chunk")?;
    let b = slice_size(bn_batch, n)?.min(m);
    let per_chunk = parts(m, b, "the BatchNorm batch (bn_batch)")?;
    let slices = Slices {
        count: n / b,
        per_group: per_chunk,
    };
    rollback_on_error(model, || {
        let params = &model.params;
        let decay = loss_decay(opt);
        // One pass at the given weights: the plain pass where the whole
        // batch is one slice (as the sequential form runs it).
        let whole = |weights: &SliceWeights| -> Result<Pass> {
            if slices.count == 1 {
                let (l, correct, g) = ghost_pass(model, x, y, None)?;
                Ok(Pass {
                    losses: vec![l],
                    correct,
                    grads: vec![g],
                })
            } else {
                sliced_pass(model, x, y, slices, weights)
            }
        };
        // First pass: each chunk's gradient and loss.
        let first = if chunks == 1 {
            whole(&SliceWeights::shared())?
        } else {
            sliced_pass(
                model,
                x,
                y,
                slices,
                &SliceWeights::copies(params, slices.count)?,
            )?
        };
        // Each chunk's loss, the mean of its slices' (`l / 1` is `l`).
        let losses: Vec<f64> = first.losses.chunks(per_chunk).map(mean_loss).collect();
        let loss = mean_loss(&losses);
        let gs = if chunks == 1 {
            first.grads
        } else {
            chunk_means(first.grads, per_chunk)?
        };
        let gs = match decay {
            Some(wd) => gs
                .into_iter()
                .map(|g| with_decay(params, g, wd, None))
                .collect::<Result<Vec<_>>>()?,
            None => gs,
        };
        let eps: Vec<Grads> = gs
            .iter()
            .map(|g| perturbation(params, g, cfg))
            .collect::<Result<_>>()?;
        // Second pass at w + eps_c; its running statistics are discarded.
        let buffers = params.snapshot_buffers()?;
        let second = if chunks == 1 {
            at_perturbed(params, &eps[0], || whole(&SliceWeights::shared()))
        } else {
            perturbed_rows(model, &eps, slices).and_then(|w| sliced_pass(model, x, y, slices, &w))
        };
        params.restore_buffers(&buffers)?;
        let second = second?;
        let g2s = if chunks == 1 {
            second.grads
        } else {
            chunk_means(second.grads, per_chunk)?
        };
        let mut total: Option<Grads> = None;
        for (g2, e) in g2s.into_iter().zip(&eps) {
            let g2 = match decay {
                Some(wd) => with_decay(params, g2, wd, Some(e))?,
                None => g2,
            };
            total = Some(add_grads(total, g2)?);
        }
        let r = SamGradient {
            loss,
            correct: first.correct,
            perturbed_correct: second.correct,
            perturbed: mean_grads(total.expect("at least one chunk"), chunks)?,
            kept: None,
            second_samples: n,
        };
        update(model, opt, &r.perturbed, lr)?;
        Ok(r)
    })
}

/// Every trainable parameter's per-slice rows `w + eps_c` (slice `s` in
/// chunk `c = s / per_group`; `w` where `eps_c` does not move it).
fn perturbed_rows(model: &Model, eps: &[Grads], slices: Slices) -> Result<SliceWeights> {
    let mut rows = BTreeMap::new();
    for (name, var) in model.params.trainable() {
        let w = var.as_tensor().detach();
        let per_chunk: Vec<Tensor> = eps
            .iter()
            .map(|e| match e.get(name) {
                Some(e) => Ok((&w + e)?),
                None => Ok(w.clone()),
            })
            .collect::<Result<_>>()?;
        let per_slice: Vec<Tensor> = (0..slices.count)
            .map(|s| per_chunk[s / slices.per_group].clone())
            .collect();
        rows.insert(name.to_string(), Tensor::stack(&per_slice, 0)?);
    }
    Ok(SliceWeights::per_slice(&model.params, slices.count, rows)?)
}
