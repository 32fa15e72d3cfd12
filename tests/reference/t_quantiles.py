#!/usr/bin/env python3
"""Student-t 0.975 quantiles for runner/src/compare.rs's tests, from the
t density integrated numerically (Simpson) and bisection: no statistics
library, so the check is independent of statrs.

    python3 tests/reference/t_quantiles.py
"""
import math


def pdf(x, v):
    return math.gamma((v + 1) / 2) / (math.sqrt(v * math.pi) * math.gamma(v / 2)) * (1 + x * x / v) ** (-(v + 1) / 2)


def cdf(t, v, n=20000):
    h = t / n
    s = pdf(0, v) + pdf(t, v) + sum((4 if i % 2 else 2) * pdf(i * h, v) for i in range(1, n))
    return 0.5 + s * h / 3


def t975(v):
    lo, hi = 1.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid, v) < 0.975 else (lo, mid)
    return lo


# Paired: differences 1, 2, 3, 4 (df 3); Welch: (1, 2, 3) vs (4, 6, 8, 10).
va, vb = 1 / 3, (20 / 3) / 4
df = (va + vb) ** 2 / (va * va / 2 + vb * vb / 3)
for label, v, se in [("paired, df 3", 3, math.sqrt(5 / 3) / 2), ("Welch", df, math.sqrt(va + vb))]:
    t = t975(v)
    print(f"{label}: df {v:.4f}, t {t:.5f}, half-width {t * se:.5f}")
print(f"df 1: t {t975(1):.4f}")
