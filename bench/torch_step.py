#!/usr/bin/env python3
"""PyTorch baseline for `scripts/gpu-check.sh`: SGD and SAM training steps of
the same CIFAR networks as samlab (bench/torch_cpu_step.py defines them:
ResNet-18 with 1x1 projection shortcuts; WRN-28-10 with samlab's
pre-activation wide blocks, no dropout), batch 256, on one
device. SGD is torch.optim.SGD(nesterov=True, momentum 0.9, weight decay
5e-4); a SAM step is the usual two passes (ascent to w + rho g/||g||,
gradient there, restore, SGD step), BatchNorm statistics from the first pass.

Settings a PyTorch user at this scale runs with, on CUDA: cuDNN benchmark
mode, channels_last tensors, and for `--precision bf16` autocast to bf16
(f32 weights, BatchNorm in f32; bf16 needs no loss scaling). TF32 stays at
PyTorch's defaults (allowed in cuDNN convolutions, not in matmuls).

Prints one JSON line per model and precision, the same fields as
`runner bench-step`: {"model", "device", "precision", "batch", "sgd_img_s",
"sam_img_s", "sam_over_sgd_time"}.

    python3 bench/torch_step.py [--device cuda] [--batch 256] [--steps 10] \
        [--precision f32 bf16] resnet18 wrn28-10
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# The same networks as samlab, defined once (torch_cpu_step.py): ResNet-18,
# and WRN-d-k with samlab's block (strided second convolution, 1x1
# projection of the raw input).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu_step import build  # noqa: E402


def loss(model, x, y):
    """Cross-entropy in f32 (under autocast the logits come in bf16)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=AMP[0]):
        logits = model(x)
    return F.cross_entropy(logits.float(), y)


AMP = [False]


def sgd_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss(model, x, y).backward()
    opt.step()


def sam_step(model, opt, x, y, rho=0.05):
    opt.zero_grad(set_to_none=True)
    loss(model, x, y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
    scale = rho / (norm + 1e-12)
    eps = [p.grad * scale for p in params]
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bn]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    opt.zero_grad(set_to_none=True)
    loss(model, x, y).backward()
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
        for m, (rm, rv, nb) in zip(bn, saved):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
    opt.step()


def bench(name, device, batch, warmup, steps, precision):
    AMP[0] = precision == "bf16"
    cuda = device.startswith("cuda")
    torch.backends.cudnn.benchmark = True
    layout = torch.channels_last if cuda else torch.contiguous_format
    model = build(name).to(device).to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rates = {}
    for method, step in [("sgd", sgd_step), ("sam", sam_step)]:
        for _ in range(warmup):
            step(model, opt, x, y)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(model, opt, x, y)
        sync()
        rates[method] = batch * steps / (time.perf_counter() - t0)
    return {
        "model": name,
        "device": device,
        "precision": precision,
        "batch": batch,
        "sgd_img_s": round(rates["sgd"], 2),
        "sam_img_s": round(rates["sam"], 2),
        "sam_over_sgd_time": round(rates["sgd"] / rates["sam"], 4),
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", nargs="+", default=["f32"], choices=["f32", "bf16"])
    a = ap.parse_args()
    for m in a.models:
        for p in a.precision:
            print(json.dumps(bench(m, a.device, a.batch, a.warmup, a.steps, p)), flush=True)


if __name__ == "__main__":
    main()
