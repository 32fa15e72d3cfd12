#!/usr/bin/env python3
"""How far PyTorch's bf16 autocast moves logits and gradients from f32, for
the bound in samlab's `precision::tests` (models/src/precision.rs): ResNet-8
and WRN-10-1 (samlab's blocks, bench/torch_cpu_step.py), training mode,
batch 6, default initialisation, CPU autocast. Prints the largest logit
difference over the largest logit, and the median and largest
||g_bf16 - g_f32|| / ||g_f32|| over the parameters.

    python3 bench/torch_amp_grads.py
"""
import os
import sys, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu_step import build
for name in ["resnet8", "wrn10-1"]:
    torch.manual_seed(0)
    m = build(name).train()
    x = torch.randn(6, 3, 32, 32); y = torch.randint(0, 10, (6,))
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    def grads(amp):
        m.load_state_dict(sd); m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(x)
        F.cross_entropy(out.float(), y).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}, out.float()
    (ga, la), (gb, lb) = grads(False), grads(True)
    print(name, "logits", ((la-lb).abs().max()/la.abs().max()).item())
    rel = sorted(((ga[n]-gb[n]).norm()/ga[n].norm()).item() for n in ga)
    print(name, "grad rel: median %.3e max %.3e" % (rel[len(rel)//2], rel[-1]))
