#!/usr/bin/env python3
"""PyTorch CPU baseline for `cargo bench -p samlab-models --bench step`.

Times the same work as the Rust bench on the same networks as samlab (CIFAR
ResNet-(6n+2) with 1x1 projection shortcuts, ResNet-18, WRN-d-k with
pre-activation wide blocks): a training step (forward in training mode,
cross-entropy, backward, SGD update w -= 0.01 g) and an evaluation forward
(eval mode, no autograd), random data, f32, on as many threads as the
machine has. Both memory layouts run, NCHW and channels_last (where
oneDNN's convolutions read contiguous channels); the better one is the
reference. Prints one JSON line:
{"model", "batch", "threads", "torch", "train_img_s", "eval_img_s",
 "train_layout", "eval_layout", "nchw_train", "nchw_eval", "cl_train", "cl_eval"}.

    pip install torch
    python3 bench/torch_cpu_step.py resnet8 128 [steps [warmup]]
"""
import json
import os
import sys
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


class ResNet(nn.Module):
    def __init__(self, stem, stages, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, cin = [], stem
        for s, (cout, blocks) in enumerate(stages):
            for b in range(blocks):
                layers.append(Basic(cin, cout, 2 if s > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        y = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Wide(nn.Module):
    """samlab's WRN block: the second convolution strides, a 1x1
    convolution projects the raw input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class WRN(nn.Module):
    def __init__(self, depth, k, classes=10):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        layers, cin = [], 16
        for s, cout in enumerate([16 * k, 32 * k, 64 * k]):
            for b in range(n):
                layers.append(Wide(cin, cout, 2 if s > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn1 = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))


def build(name):
    if name.startswith("wrn"):
        d, k = name[3:].split("-")
        return WRN(int(d), int(k))
    if name == "resnet18":
        return ResNet(64, [(64, 2), (128, 2), (256, 2), (512, 2)])
    n = (int(name[6:]) - 2) // 6
    return ResNet(16, [(16, n), (32, n), (64, n)])


def rates(name, batch, steps, warmup, layout):
    torch.manual_seed(0)
    model = build(name).to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))

    def train():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    model.train()
    for _ in range(warmup):
        train()
    t0 = time.perf_counter()
    for _ in range(steps):
        train()
    tr = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        ev = batch * steps / (time.perf_counter() - t0)
    return tr, ev


def main():
    name, batch = sys.argv[1], int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    nt, ne = rates(name, batch, steps, warmup, torch.contiguous_format)
    ct, ce = rates(name, batch, steps, warmup, torch.channels_last)
    print(json.dumps({
        "model": name, "batch": batch, "threads": threads, "torch": torch.__version__,
        "train_img_s": round(max(nt, ct), 2), "eval_img_s": round(max(ne, ce), 2),
        "train_layout": "nchw" if nt >= ct else "channels_last",
        "eval_layout": "nchw" if ne >= ce else "channels_last",
        "nchw_train": round(nt, 2), "nchw_eval": round(ne, 2),
        "cl_train": round(ct, 2), "cl_eval": round(ce, 2),
    }))


if __name__ == "__main__":
    main()
