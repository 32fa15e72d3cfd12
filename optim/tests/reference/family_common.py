"""Shared pieces of the SAM-family references (gen_gsam/msam/fsam/esam_reference.py),
which gen_looksam_reference.py takes its helpers from too.

The network, weights, batches, passes and base optimiser are those of
gen_step_reference.py and gen_looksam_reference.py: ResNet-8 of
models/tests/reference/gen_resnet_reference.py with its fixed hashed weights,
batch(k) of 8 hashed images, f64 (jax_enable_x64), Nesterov SGD with PyTorch
semantics (momentum 0.9, weight decay 5e-4, lr 0.1), 3 steps on batch(0),
batch(1), batch(2). This module only collects the helpers the four scripts
share; it computes nothing on import except what gen_step_reference does.

Conventions common to the four references (each script's note repeats them):
  * trainable parameters are the tensors whose names do not end in
    running_mean / running_var; norms and inner products are over all of them
    (not per tensor), summed in f64 in sorted name order;
  * a perturbation along a direction d is eps = rho d / (||d|| + 1e-12)
    unless the kind's paper or official code defines otherwise;
  * BatchNorm running statistics: the first pass at the unperturbed weights w
    updates them (chunks in turn, or in ghost batches the mean of all slices'
    updates, exactly as gen_step_reference.step_grads); every pass at
    perturbed weights runs in training mode (batch statistics) and its
    running-statistic update is dropped;
  * decay "Update": the base optimiser steps with g + wd w (PyTorch's
    SGD(weight_decay=wd)); decay "Loss": 0.5 wd ||w||^2 is in the loss of every
    pass (its gradient wd w' is added to the gradient taken at w'), no decay in
    the update (the SAM authors' JAX convention, as gen_step_reference.py).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_step_reference as gsr  # noqa: E402  (turns jax_enable_x64 on)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ref = gsr.ref
STEPS = 3
PERTURB_EPS = 1e-12
LR, MU, WD = gsr.LR, gsr.MU, gsr.WD


def dot(a, b):
    """<a, b> over all tensors of a, in sorted name order."""
    return sum(jnp.sum(a[n] * b[n]) for n in sorted(a))


def norm(a):
    return jnp.sqrt(dot(a, a))


def axpy(a, x, y):
    """a x + y, tensor by tensor."""
    return {n: a * x[n] + y[n] for n in y}


def initial():
    """The fixed ResNet-8 weights (trainable parameters) and running statistics."""
    sh = ref.shapes(16, gsr.STAGES, 10)
    names = sorted(sh)
    t = {k: jnp.asarray(ref.value(k, sh[k], p).astype(np.float64)) for p, k in enumerate(names)}
    params = {k: v for k, v in t.items() if not k.endswith(("running_mean", "running_var"))}
    buffers = {k: v for k, v in t.items() if k not in params}
    return params, buffers


def base_step(params, mom, g, wd_loss, nesterov=True, lr=LR):
    """PyTorch SGD (momentum 0.9, dampening 0): d = g (+ wd w unless the decay is
    in the loss); buf = d on the first step, mu buf + d after; the update is
    d + mu buf (Nesterov) or buf (heavy ball); w <- w - lr update."""
    if not wd_loss:
        g = {n: g[n] + WD * params[n] for n in params}
    mom = {n: (MU * mom[n] + g[n]) if n in mom else g[n] for n in params}
    if nesterov:
        params = {n: params[n] - lr * (g[n] + MU * mom[n]) for n in params}
    else:
        params = {n: params[n] - lr * mom[n] for n in params}
    return params, mom


def first_passes(params, buffers, x, y, chunk, bn):
    """The first pass at w of every m-sharpness chunk, with the running
    statistics exactly as gen_step_reference.step_grads leaves them. Returns
    [(xc, yc, loss_c, g_c)] and the running statistics after the step."""
    n = x.shape[0]
    m = chunk or n
    assert n % m == 0
    out, start, running = [], buffers, []
    for c in range(n // m):
        xc, yc = x[c * m:(c + 1) * m], y[c * m:(c + 1) * m]
        if bn is None:
            loss, g, buffers = gsr.grads(params, buffers, xc, yc)  # chunks update the statistics in turn
        else:
            loss, g, r = gsr.ghost_grads(params, start, xc, yc, bn)  # every chunk from the step's statistics
            running.append(r)
        out.append((xc, yc, loss, g))
    if bn is not None:
        buffers = gsr.mean_trees(running)
    return out, buffers


def perturbed_grad(pw, buffers, xc, yc, bn, wd_loss):
    """The gradient at perturbed weights pw (training mode; its running-statistic
    update is dropped), with wd pw added when the decay is in the loss."""
    loss, g2, _ = gsr.ghost_grads(pw, buffers, xc, yc, bn)
    if wd_loss:
        g2 = {k: g2[k] + WD * pw[k] for k in g2}
    return loss, g2


def head(v, k=8):
    return np.asarray(v).reshape(-1)[:k].tolist()


def tensor_stats(tree):
    """{name: {norm, head}} of a state the kind keeps."""
    return {n: {"norm": float(jnp.linalg.norm(v)), "head": head(v)} for n, v in sorted(tree.items())}


def summary(mom, params, buffers):
    return {
        "momentum": {n: {"norm": float(jnp.linalg.norm(v)), "max_abs": float(jnp.max(jnp.abs(v))), "head": head(v)}
                     for n, v in sorted(mom.items())},
        "weights_head": {n: head(v, 4) for n, v in sorted(params.items())},
        "running_head": {n: head(v, 4) for n, v in sorted(buffers.items())},
    }


def sam_run(rho, chunk=None, bn=None, wd_loss=False, steps=STEPS):
    """SAM by gen_step_reference.step_grads, in gen_step_reference.run's loop."""
    params, buffers = initial()
    mom, losses, states = {}, [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        loss, g, buffers = gsr.step_grads("sam", params, buffers, x, y, rho, chunk, False, bn, wd_loss)
        losses.append(loss)
        params, mom = base_step(params, mom, g, wd_loss)
        states.append((params, mom, buffers))
    return losses, states


def sgd_run(bn=None, wd_loss=False, nesterov=True, steps=STEPS):
    """Plain SGD by gen_step_reference.step_grads("sgd", ...)."""
    params, buffers = initial()
    mom, losses, states = {}, [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        loss, g, buffers = gsr.step_grads("sgd", params, buffers, x, y, 0.0, None, False, bn, wd_loss)
        if wd_loss:
            g = {k: g[k] + WD * params[k] for k in g}
        losses.append(loss)
        params, mom = base_step(params, mom, g, wd_loss, nesterov)
        states.append((params, mom, buffers))
    return losses, states


def rel_diff(a, b):
    """The largest |a - b| of any tensor, relative to that tensor's largest |a| entry."""
    return max(float(jnp.max(jnp.abs(a[n] - b[n]))) / max(float(jnp.max(jnp.abs(a[n]))), 1e-300) for n in a)


def check_same(losses_a, states_a, losses_b, states_b, label, bound=1e-12):
    """Two runs agree step for step: losses, weights, momentum, running statistics
    to `bound` of each tensor's largest entry. Both sides do the same f64
    operations on the same values, so they agree to the last bits; 1e-12 only
    leaves room for a reassociated sum (the scripts print what they see)."""
    worst = 0.0
    for t, ((p1, m1, b1), (p2, m2, b2)) in enumerate(zip(states_a, states_b)):
        for what, a, b in [("weights", p1, p2), ("momentum", m1, m2), ("running statistics", b1, b2)]:
            d = rel_diff(a, b)
            assert d <= bound, f"{label} step {t} {what}: differs by {d:.3e} of the largest entry"
            worst = max(worst, d)
    for l1, l2 in zip(losses_a, losses_b):
        assert abs(l1 - l2) <= bound * abs(l2), f"{label} losses {l1} vs {l2}"
        worst = max(worst, abs(l1 - l2) / abs(l2))
    assert len(states_a) == len(states_b) == STEPS
    print(f"{label}: equal for {len(states_a)} steps; largest relative difference {worst:.3e}")
    return worst


def check_differs(states_a, states_b, label, at_least=1e-6):
    """The 1e-12 bound discriminates: a case that is not the reduction differs by
    far more (compares the final momentum buffers)."""
    d = rel_diff(states_a[-1][1], states_b[-1][1])
    assert d > at_least, f"{label}: momentum differs by only {d:.3e}"
    print(f"{label}: final momentum differs by {d:.3e} of the largest entry (> {at_least:g})")
    return d


def check_step_reference(states, method, rho):
    """The loop after 2 steps reproduces step_reference.json's case (plain
    settings: no chunks, no ghost batches, decay Update)."""
    with open(os.path.join(HERE, "step_reference.json")) as f:
        stored = [c for c in json.load(f)["cases"]
                  if c["method"] == method and c["rho"] == rho and c["chunk"] is None and not c["adaptive"]
                  and c["bn_batch"] is None and c["decay"] == "Update"]
    assert len(stored) == 1, (method, rho)
    params, mom, buffers = states[1]
    got = summary(mom, params, buffers)
    for n, v in stored[0]["momentum"].items():
        assert abs(got["momentum"][n]["norm"] - v["norm"]) <= 1e-12 * v["norm"], n
    print(f"the {method} loop reproduces step_reference.json's {method} case after 2 steps")


def write(name, generator, note, cases, extra=None):
    path = os.path.join(HERE, name)
    doc = {"generator": generator, "jax": jax.__version__, "dtype": "f64", "steps": STEPS, "note": note,
           **(extra or {}), "cases": cases}
    with open(path, "w") as f:
        json.dump(doc, f)
    print("wrote", path, os.path.getsize(path), "bytes")


# --- f32 sensitivity (SAMLAB_REF_F32=1): not part of the reference ---
# Run a script with SAMLAB_REF_F32=1 to compute its cases in f32 (weights and
# batches rounded to f32, every operation in f32) and print, per case, how far
# the f32 run lands from the f64 JSON: the largest relative difference of a
# momentum tensor's norm, and of its first 8 entries relative to its largest
# entry. Nothing is written. It says which cases are chaotic in f32 (where a
# Rust f32 run cannot be held to a tight bound), as gen_step_reference.py's
# docstring does for its cases.
F32 = os.environ.get("SAMLAB_REF_F32") == "1"
if F32:
    _initial, _batch = initial, gsr.batch

    def initial():  # noqa: F811
        p, b = _initial()
        return ({k: v.astype(jnp.float32) for k, v in p.items()}, {k: v.astype(jnp.float32) for k, v in b.items()})

    def _batch32(k, n=8):
        x, y = _batch(k, n)
        return x.astype(jnp.float32), y

    gsr.batch = _batch32


def report_drift(name, cases):
    """Print the f32 cases' distance from the stored f64 cases (same order)."""
    with open(os.path.join(HERE, name)) as f:
        stored = json.load(f)["cases"]
    assert len(stored) == len(cases)
    for got, want in zip(cases, stored):
        dn = max(abs(got["momentum"][n]["norm"] - v["norm"]) / v["norm"] for n, v in want["momentum"].items())
        dh = max(max(abs(a - b) for a, b in zip(got["momentum"][n]["head"], v["head"])) / v["max_abs"]
                 for n, v in want["momentum"].items())
        label = {k: v for k, v in want.items() if not isinstance(v, (dict, list))}
        print(f"f32 against f64: momentum norms {dn:.1e}, heads {dh:.1e} of the largest entry; {label}")
