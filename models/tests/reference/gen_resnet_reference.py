#!/usr/bin/env python3
"""Reference logits and gradients for samlab's ResNet-8 and ResNet-18.

An independent JAX implementation of the same networks (CIFAR ResNet, basic
blocks, 1x1 projection shortcuts, PyTorch BatchNorm semantics) with the same
PyTorch-style names. Weights, buffers and inputs come from closed formulas
that the Rust test (models/tests/reference.rs) evaluates too, so no weights
are stored. Writes resnet_reference.json beside this file.

Inputs and weights come from an integer hash, not smooth functions: smooth,
correlated images make training-mode BatchNorm ill-conditioned (JAX's own f32
result then differs from its f64 result by more than the 1e-4 tolerance).
For the same reason ResNet-18 uses batch 8, not 2: at batch 2 its last stage
normalises over 32 values and f32 gradients drift by ~3e-3 from f64; at batch
8 by ~5e-6.

    pip install "jax[cpu]"      # tested with jax 0.10.2
    python3 models/tests/reference/gen_resnet_reference.py
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

jax.config.update("jax_enable_x64", False)
EPS = 1e-5
MOMENTUM = 0.1


def shapes(stem, stages, classes):
    """name -> shape, in the same structure as samlab_models::resnet."""
    out = {}

    def conv(name, o, i, k):
        out[name + ".weight"] = (o, i, k, k)

    def bn(name, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{s}"] = (c,)

    conv("conv1", stem, 3, 3)
    bn("bn1", stem)
    cin = stem
    for s, (width, blocks) in enumerate(stages):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            p = f"layer{s + 1}.{b}"
            conv(p + ".conv1", width, cin, 3)
            bn(p + ".bn1", width)
            conv(p + ".conv2", width, width, 3)
            bn(p + ".bn2", width)
            if stride != 1 or cin != width:
                conv(p + ".shortcut.0", width, cin, 1)
                bn(p + ".shortcut.1", width)
            cin = width
    out["linear.weight"] = (classes, cin)
    out["linear.bias"] = (classes,)
    return out


def hashed(n, stream):
    """n values uniform in [-1, 1) from an exact 32-bit integer hash of
    (index, stream); the Rust test computes the same bits."""
    m = np.uint64(0xFFFFFFFF)
    h = (np.arange(n, dtype=np.uint64) + np.uint64(stream) * np.uint64(0x632BE5AB)) & m
    h = (h * np.uint64(0x9E3779B1)) & m
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x85EBCA77)) & m
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE3D)) & m
    h ^= h >> np.uint64(16)
    return h.astype(np.float64) / 2.0**31 - 1.0


def value(name, shape, p):
    """The fixed value of tensor `name`, the p-th in sorted-name order."""
    n = int(np.prod(shape))
    s = hashed(n, p + 1)
    if len(shape) == 4:
        v = s * math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
    elif len(shape) == 2:
        v = s / math.sqrt(shape[1])
    elif name.endswith("running_var"):
        v = 1.0 + 0.25 * (1.0 + s)
    elif name.endswith("weight"):
        v = 1.0 + 0.1 * s
    else:  # biases and running means
        v = 0.1 * s
    return v.astype(np.float32).reshape(shape)


def inputs(n):
    x = hashed(n * 3 * 32 * 32, 0).astype(np.float32).reshape(n, 3, 32, 32)
    y = np.array([(7 * i + 1) % 10 for i in range(n)], dtype=np.int32)
    return x, y


def conv(x, w, stride):
    p = w.shape[2] // 2
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((p, p), (p, p)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=lax.Precision.HIGHEST)


def bn(t, name, x, train, new):
    shape = (1, -1, 1, 1)
    if train:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        new[name + ".running_mean"] = (1 - MOMENTUM) * t[name + ".running_mean"] + MOMENTUM * lax.stop_gradient(mean)
        new[name + ".running_var"] = (1 - MOMENTUM) * t[name + ".running_var"] + MOMENTUM * lax.stop_gradient(var) * count / (count - 1)
    else:
        mean, var = t[name + ".running_mean"], t[name + ".running_var"]
    y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + EPS)
    return y * t[name + ".weight"].reshape(shape) + t[name + ".bias"].reshape(shape)


def forward(t, x, stages, train):
    new = {}
    y = jax.nn.relu(bn(t, "bn1", conv(x, t["conv1.weight"], 1), train, new))
    for s, (width, blocks) in enumerate(stages):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            p = f"layer{s + 1}.{b}"
            h = jax.nn.relu(bn(t, p + ".bn1", conv(y, t[p + ".conv1.weight"], stride), train, new))
            h = bn(t, p + ".bn2", conv(h, t[p + ".conv2.weight"], 1), train, new)
            if p + ".shortcut.0.weight" in t:
                sc = bn(t, p + ".shortcut.1", conv(y, t[p + ".shortcut.0.weight"], stride), train, new)
            else:
                sc = y
            y = jax.nn.relu(h + sc)
    pooled = y.mean(axis=(2, 3))
    logits = jnp.matmul(pooled, t["linear.weight"].T, precision=lax.Precision.HIGHEST) + t["linear.bias"]
    return logits, new


def loss_fn(params, buffers, x, y, stages, train):
    logits, new = forward({**params, **buffers}, x, stages, train)
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(logp[jnp.arange(x.shape[0]), y])
    return loss, (logits, new)


def case(name, stem, stages, n):
    sh = shapes(stem, stages, 10)
    names = sorted(sh)
    tensors = {k: jnp.asarray(value(k, sh[k], p)) for p, k in enumerate(names)}
    params = {k: v for k, v in tensors.items() if not k.endswith(("running_mean", "running_var"))}
    buffers = {k: v for k, v in tensors.items() if k not in params}
    x, y = inputs(n)
    x = jnp.asarray(x)
    out = {"model": name, "batch": n, "modes": {}}
    for train in (True, False):
        grad = jax.grad(lambda p, xx: loss_fn(p, buffers, xx, y, stages, train), argnums=(0, 1), has_aux=True)
        (gp, gx), (logits, new) = grad(params, x)
        loss, _ = loss_fn(params, buffers, x, y, stages, train)
        mode = {
            "loss": float(loss),
            "logits": np.asarray(logits).tolist(),
            "input_grad_head": np.asarray(gx).reshape(-1)[:64].tolist(),
            "input_grad_norm": float(jnp.linalg.norm(gx)),
            "param_grads": {
                k: {
                    "norm": float(jnp.linalg.norm(g)),
                    "max_abs": float(jnp.max(jnp.abs(g))),
                    "head": np.asarray(g).reshape(-1)[:8].tolist(),
                }
                for k, g in sorted(gp.items())
            },
            "running_stats_head": {k: np.asarray(v).reshape(-1)[:4].tolist() for k, v in sorted(new.items())},
        }
        out["modes"]["train" if train else "eval"] = mode
    return out


def main():
    cases = [
        case("resnet8", 16, [(16, 1), (32, 1), (64, 1)], 4),
        case("resnet18", 64, [(64, 2), (128, 2), (256, 2), (512, 2)], 8),
    ]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet_reference.json")
    with open(path, "w") as f:
        json.dump({"generator": "gen_resnet_reference.py", "jax": jax.__version__, "cases": cases}, f)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
