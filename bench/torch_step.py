#!/usr/bin/env python3
"""PyTorch baseline for `scripts/gpu-check.sh`: SGD and SAM training steps of
the same CIFAR networks as samlab (ResNet-18 with 1x1 projection shortcuts;
WRN-28-10 with pre-activation wide blocks, no dropout), batch 256, on one
device. SGD is torch.optim.SGD(nesterov=True, momentum 0.9, weight decay
5e-4); a SAM step is the usual two passes (ascent to w + rho g/||g||,
gradient there, restore, SGD step), BatchNorm statistics from the first pass.

Prints one JSON line per model, the same fields as `runner bench-step`:
{"model", "device", "batch", "sgd_img_s", "sam_img_s", "sam_over_sgd_time"}.

    python3 bench/torch_step.py [--device cuda] [--batch 256] [--steps 10] resnet18 wrn28-10
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        y = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Wide(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WRN(nn.Module):
    def __init__(self, depth=28, k=10, classes=10):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        layers, cin = [], 16
        for cout, stride in [(16 * k, 1), (32 * k, 2), (64 * k, 2)]:
            for b in range(n):
                layers.append(Wide(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn1 = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))


def sgd_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def sam_step(model, opt, x, y, rho=0.05):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
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
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
        for m, (rm, rv, nb) in zip(bn, saved):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
    opt.step()


def bench(name, device, batch, warmup, steps):
    model = {"resnet18": ResNet18, "wrn28-10": WRN}[name]().to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
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
    a = ap.parse_args()
    for m in a.models:
        print(json.dumps(bench(m, a.device, a.batch, a.warmup, a.steps)), flush=True)


if __name__ == "__main__":
    main()
