#!/usr/bin/env python3
"""JAX baseline for `cargo bench -p samlab-models --bench step`.

Times one training step (forward + backward + SGD update, jit-compiled) and
one evaluation forward of the same CIFAR ResNets as samlab, using the JAX
implementation in models/tests/reference/gen_resnet_reference.py. Prints one
JSON line: {"model", "batch", "train_img_s", "eval_img_s"}.

    python3 bench/jax_step.py resnet8 128 [steps [warmup]]

`warmup` steps (default 1, the compiling one included) run before the timed
ones, for training and for evaluation.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "tests", "reference"))
import gen_resnet_reference as ref  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

CONFIGS = {
    "resnet8": (16, [(16, 1), (32, 1), (64, 1)]),
    "resnet18": (64, [(64, 2), (128, 2), (256, 2), (512, 2)]),
}


def main():
    name, batch = sys.argv[1], int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    warmup = max(1, int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    stem, stages = CONFIGS[name]
    sh = ref.shapes(stem, stages, 10)
    names = sorted(sh)
    t = {k: jnp.asarray(ref.value(k, sh[k], p)) for p, k in enumerate(names)}
    params = {k: v for k, v in t.items() if not k.endswith(("running_mean", "running_var"))}
    buffers = {k: v for k, v in t.items() if k not in params}
    x, y = ref.inputs(batch)
    x, y = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def train_step(params, buffers, x, y):
        (loss, (_, new)), g = jax.value_and_grad(
            lambda p: ref.loss_fn(p, buffers, x, y, stages, True), has_aux=True)(params)
        params = {k: v - 0.01 * g[k] for k, v in params.items()}
        return params, {**buffers, **new}, loss

    @jax.jit
    def evaluate(params, buffers, x):
        return ref.forward({**params, **buffers}, x, stages, False)[0]

    for _ in range(warmup):
        params, buffers, loss = train_step(params, buffers, x, y)
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        params, buffers, loss = train_step(params, buffers, x, y)
    loss.block_until_ready()
    train = batch * steps / (time.perf_counter() - start)
    for _ in range(warmup):
        evaluate(params, buffers, x).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        out = evaluate(params, buffers, x)
    out.block_until_ready()
    ev = batch * steps / (time.perf_counter() - start)
    print(json.dumps({"model": name, "batch": batch, "train_img_s": train, "eval_img_s": ev}))


if __name__ == "__main__":
    main()
