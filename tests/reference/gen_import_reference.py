#!/usr/bin/env python3
"""A PyTorch-trained ResNet-8 checkpoint and its logits, for samlab's Import.

Builds ResNet-8 for CIFAR-10 in PyTorch, written from kuangliu/pytorch-cifar
models/resnet.py as read at master 49b7aa97b0c1 (the file last changed in
882d877b8c81, blob b77694cefbf4): BasicBlock with conv1/bn1/conv2/bn2 and a
`shortcut` nn.Sequential(1x1 conv, BatchNorm) when stride != 1 or the width
changes, all convs bias=False, a 3x3 `conv1` + `bn1` stem, stages `layer1`..,
and a `linear` head with bias. ResNet-8 here: stem 16 channels, three stages
of widths 16/32/64 with one BasicBlock each, strides 1/2/2, 10 classes. The
one departure from kuangliu: his four-stage net ends in F.avg_pool2d(out, 4),
which is global on its 4x4 map; with three stages the map is 8x8, so this
pools over the whole remaining map (global average pool).

torch.manual_seed(0) and PyTorch's default initialisation, then 3 SGD steps
(lr 0.1, momentum 0.9, cross-entropy) in train mode on one fixed random batch
of 16 images, so weights, running_mean/running_var and the int64
num_batches_tracked (now 3) all differ from their initial values. Runs on the
CPU with one thread, so two runs write byte-identical files.

Writes, beside this file:
  import/resnet8-torch.safetensors  model.state_dict() as-is, PyTorch names,
                                    num_batches_tracked included (int64), as
                                    safetensors.torch.save_file writes it
  import/resnet8-batch.safetensors  images      f32 [8, 3, 32, 32]
                                    logits_f32  f32 [8, 10]  eval mode
                                    logits_f64  f64 [8, 10]  eval mode, the
                                                same model in float64

    /work/venv-torch/bin/python tests/reference/gen_import_reference.py
    # tested with torch 2.15.0 and safetensors 0.8.0
"""
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "import")
EVAL_SEED = 1234


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """kuangliu's ResNet with the stem and stage widths as parameters."""

    def __init__(self, block, num_blocks, widths, stem, num_classes=10):
        super().__init__()
        self.in_planes = stem
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        for i, (w, n) in enumerate(zip(widths, num_blocks)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, stride=1 if i == 0 else 2))
        self.n_stages = len(widths)
        self.linear = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for s in strides:
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.avg_pool2d(out, kernel_size=out.shape[2:])  # global: 8x8 here
        out = out.view(out.size(0), -1)
        return self.linear(out)


def resnet8():
    return ResNet(BasicBlock, [1, 1, 1], widths=[16, 32, 64], stem=16, num_classes=10)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    model = resnet8()
    init = {k: v.clone() for k, v in model.state_dict().items()}

    # Three SGD steps in train mode on one fixed batch.
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.6f}")

    sd = model.state_dict()
    for k, v in sd.items():
        assert not torch.equal(v, init[k]), f"{k} unchanged by training"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(sd)} state_dict entries, {n_params} parameters")
    for k, v in sd.items():
        print(f"  {k:32s} {str(v.dtype):14s} {list(v.shape)}")

    os.makedirs(OUT, exist_ok=True)
    ckpt = os.path.join(OUT, "resnet8-torch.safetensors")
    save_file(sd, ckpt)

    # Evaluation batch and eval-mode logits in f32 and f64.
    g = torch.Generator().manual_seed(EVAL_SEED)
    images = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float32)
    model.eval()
    model64 = copy.deepcopy(model).double()
    model64.eval()
    with torch.no_grad():
        logits_f32 = model(images)
        logits_f64 = model64(images.double())

    # Round trip: a fresh model loaded strictly from the file gives the same logits.
    fresh = resnet8()
    fresh.load_state_dict(load_file(ckpt), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), logits_f32), "reloaded checkpoint disagrees"

    save_file(
        {"images": images.contiguous(), "logits_f32": logits_f32.contiguous(), "logits_f64": logits_f64.contiguous()},
        os.path.join(OUT, "resnet8-batch.safetensors"),
    )

    diff = (logits_f32.double() - logits_f64).abs().max().item()
    print(f"max |logits_f64|               = {logits_f64.abs().max().item():.6e}")
    print(f"max |logits_f32 - logits_f64|  = {diff:.6e}")
    print(f"argmax f64: {logits_f64.argmax(1).tolist()}")
    print(f"wrote {os.path.relpath(OUT)}/resnet8-torch.safetensors and resnet8-batch.safetensors")


if __name__ == "__main__":
    main()
