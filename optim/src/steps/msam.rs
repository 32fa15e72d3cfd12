//! Momentum-SAM (Becker, Altrock and Risse, "Momentum-SAM: Sharpness Aware
//! Minimization without Computational Overhead", arXiv:2401.12033, 2024):
//! one pass a step, at weights perturbed along the negative momentum.
//!
//! A step: with `v` the base optimiser's momentum buffer after the previous
//! step (read from the [`Sgd`](crate::Sgd)'s state, not kept twice),
//! - `eps = -rho v / (||v|| + 1e-12)` (the norm over the parameters of
//!   SAM's scope, summed in f64 in name order; `eps = 0` at the first step,
//!   which has no buffer: a plain SGD step, as the official optimiser's
//!   zero buffers give);
//! - one training-mode pass at `w + eps`: the step's loss, accuracy and
//!   gradient `g`; this pass, the only one, updates the BatchNorm running
//!   statistics (as the official training pass at the perturbed point
//!   does); with ghost batches, as every pass takes them;
//! - the base optimiser steps from `w` with `g` (weight decay in the
//!   update: `wd w` at the unperturbed weights; in the loss: `g + wd (w +
//!   eps)`, the official placement).
//!
//! The official code stores `w + eps` between steps and moves back inside
//! the step; samlab keeps `w` (checkpoints, evaluation and switching hold
//! the unperturbed weights) and perturbs for the pass: the same arithmetic
//! up to rounding. The official optimiser is heavy ball; with samlab's
//! Nesterov SGD the perturbation is along the same PyTorch buffer `v`.
//!
//! Settings: none of its own. rho is SAM's (`sam: (rho: 3.0)` is the
//! paper's CIFAR setting for WideResNet-16-4 and ResNet-50, its README's
//! command lines; SAM's in the same paper is 0.2), so SAM's rho schedule
//! and scope apply. m-sharpness chunks do not apply (the perturbation does
//! not depend on the batch) and adaptive scaling is not part of the method:
//! both are errors at check time. Cost: one pass a step. State: none (the
//! momentum is the optimiser's, saved with it).
//!
//! Source: MarlonBecker/MSAM `optimizer/msam.py` (commit
//! 780fa4f623fe0c99760fd7cfb1a94d14f00179ee). Test reference:
//! `optim/tests/reference/gen_msam_reference.py`.

use super::{Method, NoSettings, RunShape, StepCtx, StepKind, StepOutput, StepSettings};
use crate::error::{Result, bad};
use crate::sam::{loss_decay, pass_at, perturbation_along, rollback_on_error, update, with_decay};
use crate::sgd::Grads;

#[derive(Debug, Default)]
pub struct Msam;

impl StepKind for Msam {
    type Settings = NoSettings;
    const USES_SAM: bool = true;

    fn check_run(_: &NoSettings, run: &RunShape) -> Result<()> {
        let sam = run.settings.sam;
        // Chunks the size of the ghost batch (the default a study's
        // per-device BatchNorm gives) are the devices of one step: each
        // would perturb along the same, all-reduced momentum, which is the
        // step as it runs. Other chunks would normalise differently.
        if let Some(m) = sam.chunk
            && Some(m) != run.settings.bn_batch
        {
            return Err(bad(format!(
                "Momentum-SAM perturbs along the momentum, the same for every chunk: sam.chunk ({m}) must be unset or the ghost batch (bn_batch)"
            )));
        }
        if sam.adaptive {
            return Err(bad(
                "Momentum-SAM has no adaptive (ASAM) scaling: sam.adaptive must be false",
            ));
        }
        Ok(())
    }

    fn cost(_: &NoSettings) -> f64 {
        1.0
    }

    fn step(&mut self, s: &NoSettings, c: StepCtx<'_>) -> Result<StepOutput> {
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
        rollback_on_error(model, || {
            let v = opt.state();
            let eps: Option<Grads> = if v.is_empty() {
                None
            } else {
                let e = perturbation_along(&model.params, v, sam, sam.rho, 1e-12)?;
                Some(
                    e.into_iter()
                        .map(|(k, t)| Ok((k, t.neg()?)))
                        .collect::<Result<_>>()?,
                )
            };
            let none = Grads::new();
            let (loss, correct, g) = pass_at(model, eps.as_ref().unwrap_or(&none), x, y, bn_batch)?;
            let g = match loss_decay(opt) {
                Some(wd) => with_decay(&model.params, g, wd, eps.as_ref())?,
                None => g,
            };
            update(model, opt, &g, lr)?;
            Ok(StepOutput {
                method: Method::Msam,
                loss,
                correct,
                perturbed_correct: eps.is_some().then_some(correct),
                samples: y.dim(0)?,
                passes: 1.0,
            })
        })
    }
}
