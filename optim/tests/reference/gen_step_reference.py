#!/usr/bin/env python3
"""Reference for two optimiser steps of samlab-optim on ResNet-8 (JAX).

Uses the JAX ResNet of models/tests/reference/gen_resnet_reference.py (same
names, fixed weights from the same integer hash). For each case it runs two
steps on two batches of 8 images with Nesterov SGD (momentum 0.9, weight
decay 5e-4, lr 0.1) as the base optimiser:
  sgd            plain SGD steps
  sam            SAM, rho 0.05, one perturbation for the whole batch
  sam_m4         SAM, rho 0.05, m-sharpness with chunks of 4
  asam           adaptive SAM, rho 0.5, eta 0.01
  sgd_bn4        SGD in ghost batches of 4 (BatchNorm per 4 images, as on
                 2 devices of 4: gradients averaged, running statistics
                 updated once with the mean of the slices' updates)
  sam_m4_bn4     SAM with m = 4 on ghost batches of 4 (the thesis' protocol,
                 Section 5.1: each device perturbs and normalises its own 32)
  sam_bn4        SAM with one perturbation for the batch of 8, each pass in
                 ghost batches of 4
  sam_wdloss     SAM with the weight decay in the loss of both passes (the
                 SAM authors' JAX code): perturbation along g + wd w, second
                 gradient g' + wd (w + e), no decay in the update
  sam_m4_bn4_wdloss  the same with m = 4 on ghost batches of 4
and records the losses, the momentum buffers (norm and first elements), the
final weights' first elements and the running statistics. The momentum buffer
carries the update without the cancellation of w_new - w_old in f32.

Computed in f64 (jax_enable_x64) from inputs and weights that are f32 values,
so the Rust test can check its f64 run tightly. The reference is not taken in
f32 because two of these cases are chaotic in f32: BatchNorm over chunks of 4
images (sam_m4) and rho = 0.5 (asam) put ReLU inputs within f32 rounding of
zero, and JAX's own f32 run differs from its f64 run by up to 2e-2 of the
largest momentum entry in sam_m4 (1e-6 in the other cases).

    pip install "jax[cpu]==0.10.2" numpy
    python3 optim/tests/reference/gen_step_reference.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "models", "tests", "reference"))
import gen_resnet_reference as ref  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)  # after gen_resnet_reference turned it off

STAGES = [(16, 1), (32, 1), (64, 1)]
LR, MU, WD = 0.1, 0.9, 5e-4


def batch(k, n=8):
    x = ref.hashed(n * 3 * 32 * 32, 1000 + k).astype(np.float32).astype(np.float64).reshape(n, 3, 32, 32)
    y = np.array([(3 * i + k) % 10 for i in range(n)], dtype=np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def grads(params, buffers, x, y):
    (loss, (logits, new)), g = jax.value_and_grad(
        lambda p: ref.loss_fn(p, buffers, x, y, STAGES, True), has_aux=True)(params)
    return float(loss), g, {**buffers, **new}


def mean_trees(trees):
    return {k: sum(t[k] for t in trees) / len(trees) for k in trees[0]}


def ghost_grads(params, buffers, x, y, bn):
    """One pass in slices of bn images, each from the same running statistics:
    mean loss, mean gradient, mean of the slices' running-statistic updates."""
    n = x.shape[0]
    if bn is None or bn >= n:
        return grads(params, buffers, x, y)
    out = [grads(params, buffers, x[s * bn:(s + 1) * bn], y[s * bn:(s + 1) * bn]) for s in range(n // bn)]
    return (float(np.mean([o[0] for o in out])), mean_trees([o[1] for o in out]), mean_trees([o[2] for o in out]))


def step_grads(method, params, buffers, x, y, rho, chunk, adaptive, bn=None, wd_loss=False):
    if method == "sgd":
        return ghost_grads(params, buffers, x, y, bn)
    n = x.shape[0]
    m = chunk or n
    chunks = n // m
    total, losses = None, []
    start, running = buffers, []
    for c in range(chunks):
        xc, yc = x[c * m:(c + 1) * m], y[c * m:(c + 1) * m]
        if bn is None:
            loss, g, buffers = grads(params, buffers, xc, yc)  # the first pass updates running stats, in turn
        else:
            loss, g, r = ghost_grads(params, start, xc, yc, bn)  # every chunk from the step's statistics
            running.append(r)
        losses.append(loss)
        if wd_loss:
            g = {k: g[k] + WD * params[k] for k in g}
        t = {k: (jnp.abs(params[k]) + 0.01 if adaptive and k.endswith("weight") else 1.0) for k in params}
        tg = {k: g[k] * t[k] for k in params}
        norm = jnp.sqrt(sum(jnp.sum(v * v) for v in tg.values()))
        pw = {k: params[k] + rho * t[k] * tg[k] / (norm + 1e-12) for k in params}
        _, g2, _ = ghost_grads(pw, buffers, xc, yc, bn)  # the second pass's statistics are dropped
        if wd_loss:
            g2 = {k: g2[k] + WD * pw[k] for k in g2}
        total = g2 if total is None else {k: total[k] + g2[k] for k in total}
    if bn is not None:
        buffers = mean_trees(running)  # one update: the mean over all slices
    return float(np.mean(losses)), {k: v / chunks for k, v in total.items()}, buffers


def run(method, rho=0.0, chunk=None, adaptive=False, bn=None, wd_loss=False):
    sh = ref.shapes(16, STAGES, 10)
    names = sorted(sh)
    t = {k: jnp.asarray(ref.value(k, sh[k], p).astype(np.float64)) for p, k in enumerate(names)}
    params = {k: v for k, v in t.items() if not k.endswith(("running_mean", "running_var"))}
    buffers = {k: v for k, v in t.items() if k not in params}
    mom = {}
    losses = []
    for k in range(2):
        x, y = batch(k)
        loss, g, buffers = step_grads(method, params, buffers, x, y, rho, chunk, adaptive, bn, wd_loss)
        losses.append(loss)
        if not wd_loss:
            g = {n: g[n] + WD * params[n] for n in params}
        mom = {n: (MU * mom[n] + g[n]) if n in mom else g[n] for n in params}
        params = {n: params[n] - LR * (g[n] + MU * mom[n]) for n in params}
    head = lambda v, k=8: np.asarray(v).reshape(-1)[:k].tolist()  # noqa: E731
    return {
        "method": method, "rho": rho, "chunk": chunk, "adaptive": adaptive, "bn_batch": bn,
        "decay": "Loss" if wd_loss else "Update",
        "losses": losses,
        "momentum": {n: {"norm": float(jnp.linalg.norm(v)), "max_abs": float(jnp.max(jnp.abs(v))), "head": head(v)}
                     for n, v in sorted(mom.items())},
        "weights_head": {n: head(v, 4) for n, v in sorted(params.items())},
        "running_head": {n: head(v, 4) for n, v in sorted(buffers.items())},
    }


def main():
    cases = [run("sgd"), run("sam", 0.05), run("sam", 0.05, chunk=4), run("sam", 0.5, adaptive=True),
             run("sgd", bn=4), run("sam", 0.05, chunk=4, bn=4), run("sam", 0.05, bn=4),
             run("sam", 0.05, wd_loss=True), run("sam", 0.05, chunk=4, bn=4, wd_loss=True)]
    path = os.path.join(HERE, "step_reference.json")
    with open(path, "w") as f:
        json.dump({"generator": "gen_step_reference.py", "jax": jax.__version__, "dtype": "f64", "cases": cases}, f)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
