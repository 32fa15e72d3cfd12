#!/usr/bin/env python3
"""Reference values for the TOST and Holm tests in runner/src/stats.rs and
runner/src/claims.rs, without a statistics library (so the check is
independent of statrs): Student's t CDF from the closed form at 2 degrees
of freedom, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), cross-checked by Simpson
integration of the t density; quantiles by bisection; Holm by its
definition.

    python3 tests/reference/tost_holm.py
"""
import math


def pdf(x, v):
    return math.gamma((v + 1) / 2) / (math.sqrt(v * math.pi) * math.gamma(v / 2)) * (1 + x * x / v) ** (-(v + 1) / 2)


def cdf_numeric(t, v, n=20000):
    h = t / n
    s = pdf(0, v) + pdf(t, v) + sum((4 if i % 2 else 2) * pdf(i * h, v) for i in range(1, n))
    return 0.5 + s * h / 3


def cdf2(t):
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def quantile(p, cdf):
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return lo


def holm(ps):
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out, running = [0.0] * m, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * ps[k]))
        out[k] = running
    return out


for t in [0.5, 3.0, 12.0]:
    print(f"F2({t}) closed {cdf2(t):.9f}, numeric {cdf_numeric(t, 2):.9f}")
t90, t95 = quantile(0.95, cdf2), quantile(0.975, cdf2)
print(f"t(0.95, 2) = {t90:.6f}, t(0.975, 2) = {t95:.6f}, t(0.9, 2) = {quantile(0.9, cdf2):.6f}")

# stats::tests::tost_matches_the_hand_computation: differences 0.1, 0.3, 0.2.
d = [0.1, 0.3, 0.2]
mean = sum(d) / 3
sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
se = sd / math.sqrt(3)
for margin in [0.5, 0.3]:
    p_lower = 1 - cdf2((mean + margin) / se)
    p_upper = cdf2((mean - margin) / se)
    print(f"margin {margin}: p_lower {p_lower:.7f}, p_upper {p_upper:.7f}, "
          f"90% [{mean - t90 * se:.6f}, {mean + t90 * se:.6f}]")
print(f"two-sided p {2 * (1 - cdf2(mean / se)):.7f}; 95% [{mean - t95 * se:.6f}, {mean + t95 * se:.6f}]")
# claims::tests, level 0.9: the 80% interval.
t80 = quantile(0.9, cdf2)
print(f"level 0.9: 80% interval hi {mean + t80 * se:.6f} (x 100: points)")
# claims::tests::an_interval_holding_zero: differences -0.5, 0.5, -0.5.
d = [-0.5, 0.5, -0.5]
mean = sum(d) / 3
se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
print(f"-0.5, 0.5, -0.5: 90% [{mean - t90 * se:.4f}, {mean + t90 * se:.4f}]")

# stats::tests::holm_matches_the_hand_computation.
print("holm", holm([0.01, 0.04, 0.03, 0.005]))
# claims::tests::a_family_is_corrected_by_holm: sd s, n = 3, mean 1.
ps = [1 - math.sqrt(3) / s / math.sqrt(2 + 3 / s ** 2) for s in [0.05, 0.2, 0.3, 0.35]]
print("family p", [f"{p:.7f}" for p in ps], "holm", [f"{p:.7f}" for p in holm(ps)])
