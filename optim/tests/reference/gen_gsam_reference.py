#!/usr/bin/env python3
"""Reference for three GSAM steps of samlab-optim on ResNet-8 (JAX, f64).

GSAM is Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu,
"Surrogate Gap Minimization Improves Sharpness-Aware Training", ICLR 2022
(https://openreview.net/forum?id=edONMAnhLu-). Official code, read here:
  * google-research/big_vision, big_vision/trainers/proj/gsam/gsam.py (file
    last changed in commit 0a83553c79153ce6c3e4c2483d471eb683c137dc; read at
    the repository's commit 0127fb6b337ee2a27bf4e54dea79cff176527356), which
    juntang-zhuang/GSAM's README calls the "Official implementation in jax";
  * juntang-zhuang/GSAM, gsam/gsam.py and gsam/scheduler.py (commit
    a770275b3324a3ed4bf4a1cddb976b2782ba852b), a PyTorch re-implementation
    ("tested only on a Cifar10 experiment", its README says).

The official JAX update (big_vision gsam.py, gsam_gradient, minimize_fp=True,
adaptive_perturbation=False), quoted:

    l_clean, g_clean = jax.value_and_grad(loss_fn)(params, inputs, targets)
    g_clean_normalized, g_clean_length = dual_vector(g_clean)
    if lr_max == lr_min:
      sam_rho = rho_max
    else:
      sam_rho = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    param_sam = jax.tree_map(lambda a, b: a + \\
        sam_rho * b / (g_clean_length + eps), params, g_clean)
    _, g_robust = jax.value_and_grad(loss_fn)(param_sam, inputs, targets)
    g_robust_normalized, _ = dual_vector(g_robust)
    g_clean_projection_norm = sum(jnp.vdot(p, q) for (p,q) in
        zip(g_robust_normalized_flatten, g_clean_flatten))
    g_clean_residual = jax.tree_map(lambda a, b:
        a - g_clean_projection_norm * b, g_clean, g_robust_normalized)
    g_gsam = jax.tree_map(lambda a, b: a - b * alpha,
        g_robust, g_clean_residual)

with eps = 1e-12 and dual_vector(y) = (y / ||y||, ||y||) (no epsilon), the
norms over the whole parameter tree. In the trainer (big_vision
gsam/train.py) `learning_rate = sched_fns[0](step) * config.lr` is the lr of
the step being taken, and the per-device GSAM gradients are averaged
(`jax.lax.pmean`) after the decomposition: each device decomposes its own
gradients. The paper's Algorithm 1 is the same update: perturb by
rho_t g/||g||, take g_p = grad f at w + eps, decompose the clean g into its
parts parallel and orthogonal to g_p, g_perp = g - <g, g_p/||g_p||> g_p/||g_p||,
and descend along g_p - alpha g_perp; rho_t follows the lr schedule,
(rho_t - rho_min)/(rho_max - rho_min) = (lr_t - lr_min)/(lr_max - lr_min).
The PyTorch re-implementation computes the same vector with perturb_eps in
two more places (cosine = <g, g_p>/(||g_p|| ||g|| + eps) and a division by
||g_p|| + eps); the reference follows the official JAX code (no epsilon in
the decomposition); the difference is of relative size 1e-12/||g_p||.

What is computed (per step t, in this order):
  1. rho_t = rho_min + (rho_max - rho_min)(lr_t - lr_min)/(lr_max - lr_min),
     or rho_max when lr_max == lr_min (the official rule). The JSON gives
     rho_t per step; the base optimiser's lr is 0.1 in every step of every
     case (lr_t in the "schedule" case is only the rule's input, so the Rust
     side can feed rho_t and check its rule on the same numbers).
  2. For each m-sharpness chunk c (the whole batch when chunk is null):
     g_c = gradient at w of the chunk's mean loss (training mode; this pass
     updates the BatchNorm running statistics, chunks in turn, or in ghost
     batches from the step's statistics with the mean of the slices' updates
     kept, exactly as gen_step_reference.step_grads). Decay "Loss":
     g_c += wd w.
  3. eps_c = rho_t g_c / (||g_c|| + 1e-12); g_p,c = gradient at w + eps_c
     (training mode, its running statistics dropped). Decay "Loss":
     g_p,c += wd (w + eps_c).
  4. u_c = g_p,c / ||g_p,c||; g_perp,c = g_c - <u_c, g_c> u_c;
     d_c = g_p,c - alpha g_perp,c (per chunk, as the official code
     decomposes per device before the mean).
  5. d = mean over chunks of d_c; the base optimiser steps with d (plus
     wd w in decay "Update"). Two passes per step.
The recorded loss of a step is the mean over chunks of the first pass's loss
(the official code returns the clean loss); "perturbed_losses" are the second
pass's (f_p; the surrogate gap is perturbed minus clean).

Differences from the paper and the official code, deliberate (also in the
JSON's "note"): (1) m-sharpness chunks, ghost batches, decay placement and the
Nesterov base optimiser are samlab settings, applied as gen_step_reference.py
applies them to SAM; the per-chunk decomposition is the official code's
per-device one; (2) the base optimiser's lr is constant 0.1, rho_t is given
per step; (3) the adaptive perturbation is not covered (adaptive: false).

Checks inside the script (it fails if any does not hold): alpha = 0 equals
samlab's SAM (gen_step_reference.step_grads) step for step to 1e-12 of each
tensor's largest entry, in the plain setting, with m = 4 in ghost batches of
4 and with the decay in the loss; the plain SAM loop reproduces
step_reference.json's "sam" case after 2 steps; g_perp is orthogonal to g_p;
the first step's direction equals a literal transcription of big_vision's
gsam_gradient (tree_map spelled jax.tree_util.tree_map, which jax 0.10
requires) to 1e-12; alpha = 0.1 differs from alpha = 0 by more than 1e-6
(so the 1e-12 bound discriminates). The bound 1e-12: both sides do the same
f64 operations in the same order; the script prints the largest difference.

    /work/scratch/venv-jax-looksam/bin/python optim/tests/reference/gen_gsam_reference.py
    (with SAMLAB_REF_F32=1 it runs the cases in f32 and prints how far each lands
    from the f64 JSON, family_common.report_drift; it writes nothing then)
    (or: pip install "jax[cpu]==0.10.2" numpy; python3 ...)
"""
import family_common as fc
from family_common import gsr, jax, jnp

NOTE = (
    "GSAM (Zhuang et al., ICLR 2022) as the official JAX code computes it (google-research/big_vision "
    "big_vision/trainers/proj/gsam/gsam.py, gsam_gradient, minimize_fp=True, adaptive_perturbation=False; commit "
    "0a83553c79153ce6c3e4c2483d471eb683c137dc): rho_t = rho_min + (rho_max - rho_min)(lr_t - lr_min)/(lr_max - "
    "lr_min) (rho_max when lr_max == lr_min); eps = rho_t g/(||g|| + 1e-12); g_p = grad at w + eps; u = g_p/||g_p|| "
    "(no epsilon); g_perp = g - <u, g> u; direction g_p - alpha g_perp. With m-sharpness chunks each chunk "
    "decomposes its own gradients and the directions are averaged (the official per-device decomposition before "
    "pmean). Norms and inner products over all trainable parameters (names not ending in running_mean/"
    "running_var), summed in f64. Only the first pass at w updates the BatchNorm running statistics; the pass at "
    "w + eps runs in training mode and its statistics are dropped. Deliberate differences: (1) m-sharpness, ghost "
    "batches, decay placement (Update: g + wd w in the base optimiser; Loss: wd w added to g and wd (w + eps) to "
    "g_p) and Nesterov SGD (PyTorch semantics, momentum 0.9, wd 5e-4) are samlab settings; (2) the base "
    "optimiser's lr is 0.1 in every step; rho_t is given per step (in the schedule case lr_t is only the rule's "
    "input); (3) the PyTorch re-implementation (juntang-zhuang/GSAM a770275) adds 1e-12 in the cosine and in a "
    "division by ||g_p||; not followed. alpha = 0 is exactly SAM (checked in the script). passes: 2 per step."
)


def gsam_direction(params, buffers, x, y, rho_t, alpha, chunk, bn, wd_loss):
    firsts, buffers = fc.first_passes(params, buffers, x, y, chunk, bn)
    dirs, losses, plosses = [], [], []
    for xc, yc, loss, g in firsts:
        if wd_loss:
            g = {k: g[k] + fc.WD * params[k] for k in g}
        gn = fc.norm(g)
        pw = {k: params[k] + rho_t * g[k] / (gn + fc.PERTURB_EPS) for k in params}
        ploss, gp = fc.perturbed_grad(pw, buffers, xc, yc, bn, wd_loss)
        gpn = fc.norm(gp)
        u = {k: gp[k] / gpn for k in gp}
        proj = fc.dot(u, g)
        perp = {k: g[k] - proj * u[k] for k in g}
        bound = 1e-5 if fc.F32 else 1e-12
        assert abs(float(fc.dot(perp, gp))) <= bound * float(fc.norm(g) * gpn), "g_perp not orthogonal to g_p"
        dirs.append({k: gp[k] - perp[k] * alpha for k in gp})
        losses.append(loss)
        plosses.append(ploss)
    return float(sum(losses) / len(losses)), float(sum(plosses) / len(plosses)), gsr.mean_trees(dirs), buffers


def rho_rule(lr, lr_max, lr_min, rho_max, rho_min):
    if lr_max == lr_min:
        return rho_max
    return rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)


def gsam(alpha, rho_max, rho_min=None, lr_t=None, lr_max=fc.LR, lr_min=fc.LR, chunk=None, bn=None, wd_loss=False,
         steps=fc.STEPS):
    rho_min = rho_max if rho_min is None else rho_min
    lr_t = lr_t or [fc.LR] * steps
    rho_t = [rho_rule(lr, lr_max, lr_min, rho_max, rho_min) for lr in lr_t]
    params, buffers = fc.initial()
    mom, losses, plosses, passes, dnorms, states = {}, [], [], [], [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        loss, ploss, d, buffers = gsam_direction(params, buffers, x, y, rho_t[t], alpha, chunk, bn, wd_loss)
        losses.append(loss)
        plosses.append(ploss)
        passes.append(2)
        dnorms.append(float(fc.norm(d)))
        params, mom = fc.base_step(params, mom, d, wd_loss)
        states.append((params, mom, buffers))
    case = {
        "method": "gsam", "rho": rho_max, "chunk": chunk, "adaptive": False, "bn_batch": bn,
        "decay": "Loss" if wd_loss else "Update", "nesterov": True,
        "alpha": alpha, "rho_max": rho_max, "rho_min": rho_min, "lr_max": lr_max, "lr_min": lr_min,
        "lr_t": lr_t, "rho_t": rho_t,
        "losses": losses, "perturbed_losses": plosses, "passes": passes, "direction_norm": dnorms,
        **fc.summary(mom, params, buffers),
    }
    return case, losses, states


# --- a literal transcription of big_vision's gsam.py (commit 0a83553), for the check ---
def dual_vector(y):
    gradient_norm = jnp.sqrt(sum(jnp.sum(jnp.square(e)) for e in jax.tree_util.tree_leaves(y)))
    normalized_gradient = jax.tree_util.tree_map(lambda x: x / gradient_norm, y)
    return normalized_gradient, gradient_norm


def gsam_gradient(loss_fn, params, inputs, targets, rho_max, rho_min, alpha, lr, lr_max, lr_min, eps=1e-12):
    l_clean, g_clean = jax.value_and_grad(loss_fn)(params, inputs, targets)
    g_clean_normalized, g_clean_length = dual_vector(g_clean)
    if lr_max == lr_min:
        sam_rho = rho_max
    else:
        sam_rho = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    param_sam = jax.tree_util.tree_map(lambda a, b: a + sam_rho * b / (g_clean_length + eps), params, g_clean)
    _, g_robust = jax.value_and_grad(loss_fn)(param_sam, inputs, targets)
    g_clean_flatten, _ = jax.tree_util.tree_flatten(g_clean)
    g_robust_normalized, _ = dual_vector(g_robust)
    g_robust_normalized_flatten, _ = jax.tree_util.tree_flatten(g_robust_normalized)
    g_clean_projection_norm = sum(jnp.vdot(p, q) for (p, q) in zip(g_robust_normalized_flatten, g_clean_flatten))
    g_clean_residual = jax.tree_util.tree_map(lambda a, b: a - g_clean_projection_norm * b, g_clean,
                                              g_robust_normalized)
    g_gsam = jax.tree_util.tree_map(lambda a, b: a - b * alpha, g_robust, g_clean_residual)
    return l_clean, g_gsam


def check_official(alpha, rho_max, rho_min, lr, lr_max, lr_min):
    params, buffers = fc.initial()
    x, y = gsr.batch(0)
    loss_fn = lambda p, xx, yy: fc.ref.loss_fn(p, buffers, xx, yy, gsr.STAGES, True)[0]  # noqa: E731
    l_off, g_off = gsam_gradient(loss_fn, params, x, y, rho_max, rho_min, alpha, lr, lr_max, lr_min)
    rho_t = rho_rule(lr, lr_max, lr_min, rho_max, rho_min)
    l_ours, _, d, _ = gsam_direction(params, buffers, x, y, rho_t, alpha, None, None, False)
    diff = fc.rel_diff(g_off, d)
    assert diff <= 1e-12 and abs(float(l_off) - l_ours) <= 1e-12 * abs(l_ours), diff
    print(f"the first direction equals big_vision's gsam_gradient (alpha {alpha}, rho_t {rho_t}): {diff:.3e}")


def main():
    if not fc.F32:
        check_official(0.3, 0.1, 0.1, fc.LR, fc.LR, fc.LR)
        check_official(0.1, 0.1, 0.02, 0.07, 0.1, 0.01)
    schedule = dict(alpha=0.1, rho_max=0.1, rho_min=0.02, lr_t=[0.1, 0.07, 0.04], lr_max=0.1, lr_min=0.01)
    cases, runs = [], {}
    for label, args in [("a0.1", dict(alpha=0.1, rho_max=0.05)), ("a0.3", dict(alpha=0.3, rho_max=0.1)),
                        ("a0", dict(alpha=0.0, rho_max=0.05)), ("schedule", schedule),
                        ("a0.1 m4 bn4", dict(alpha=0.1, rho_max=0.05, chunk=4, bn=4)),
                        ("a0.1 loss", dict(alpha=0.1, rho_max=0.05, wd_loss=True))]:
        case, losses, states = gsam(**args)
        cases.append(case)
        runs[label] = (losses, states)
        print("case", label, "rho_t", case["rho_t"], "losses", losses)
    if fc.F32:  # the f32 sensitivity run (family_common): print, write nothing
        return fc.report_drift("gsam_reference.json", cases)
    sam_losses, sam_states = fc.sam_run(0.05)
    fc.check_step_reference(sam_states, "sam", 0.05)
    fc.check_same(*runs["a0"], sam_losses, sam_states, "alpha = 0 and SAM (plain)")
    fc.check_differs(runs["a0"][1], runs["a0.1"][1], "alpha = 0.1 against alpha = 0")
    for label, extra in [("m = 4, ghost batches of 4", dict(chunk=4, bn=4)), ("decay in the loss", dict(wd_loss=True))]:
        _, losses, states = gsam(0.0, 0.05, **extra)
        fc.check_same(losses, states, *fc.sam_run(0.05, **extra), f"alpha = 0 and SAM ({label})")
    fc.write("gsam_reference.json", "gen_gsam_reference.py", NOTE, cases)


if __name__ == "__main__":
    main()
