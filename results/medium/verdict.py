#!/usr/bin/env python3
"""The verdict table of results/medium/README.md, from the studies' summary.csv.

Each claim of the thesis is decided by a paired difference over seeds (the
same seed gives both runs the same initialisation and data order) with a
95% Student-t interval: reproduced when the interval lies on the claimed
side of 0, not reproduced when it lies on the other side, inconclusive when
it contains 0. Escape steps of runs that did not escape within the budget
count as the budget (a lower bound: the difference it gives is a bound too,
said in the row). Standard library only:

    python3 results/medium/verdict.py > results/medium/verdict.md
"""
import csv
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# two-sided 95% Student-t quantiles by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        19: 2.093, 29: 2.045}


def t975(df):
    keys = sorted(k for k in T975 if k <= df)
    return T975[keys[-1]] if keys else float("nan")


def rows(study):
    path = os.path.join(HERE, study, "summary.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def pick(rs, name, measure, **coords):
    """{seed: value} of stage `name` at the grid coordinates `coords`."""
    out = {}
    for r in rs:
        if r["name"] != name or r.get("state") not in ("ok", "cached", None):
            continue
        if any(str(r.get(k, "")) != str(v) for k, v in coords.items()):
            continue
        v = r.get(measure, "")
        if v == "":
            continue
        out[r.get("seed", "") or "0"] = float(v)
    return out


def paired(a, b):
    """mean, lo, hi, n of a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    if n == 0:
        return None
    m = statistics.fmean(d)
    if n < 2:
        return m, float("nan"), float("nan"), n
    h = t975(n - 1) * statistics.stdev(d) / math.sqrt(n)
    return m, m - h, m + h, n


def verdict(iv, side):
    """`side` +1: the claim is a > b; -1: a < b."""
    if iv is None or math.isnan(iv[1]):
        return "inconclusive (n < 2)"
    m, lo, hi, n = iv
    if side > 0:
        return "reproduced" if lo > 0 else ("not reproduced" if hi < 0 else "inconclusive")
    return "reproduced" if hi < 0 else ("not reproduced" if lo > 0 else "inconclusive")


def fmt(iv, scale=1.0, unit=""):
    if iv is None:
        return "no data"
    m, lo, hi, n = iv
    g = lambda v: f"{v * scale:+.3g}"  # noqa: E731
    if math.isnan(lo):
        return f"{g(m)}{unit} (n = {n})"
    return f"{g(m)}{unit} [{g(lo)}, {g(hi)}] (n = {n})"


def censored(rs, name, budget, **coords):
    """Escape steps by seed, runs that did not escape counted as `budget`."""
    esc = pick(rs, name, "escaped", **coords)
    steps = pick(rs, name, "escape_steps", **coords)
    return {s: (steps[s] if esc[s] == 1 else budget) for s in esc}, sum(1 for v in esc.values() if v == 0)


def main():
    out = ["| claim (thesis) | measure | difference [95% interval] (n) | verdict |", "|---|---|---|---|"]
    sw = rows("switch")
    if sw:
        acc = {m: pick(sw, m, "test_acc") for m in ("sgd", "sam", "sgd-sam", "sam-sgd", "psam")}
        for a, b, claim in [("sam", "sgd", "SAM > SGD (Table 5.2)"),
                            ("sgd-sam", "sgd", "SGD->SAM > SGD (Table 5.2)"),
                            ("sam-sgd", "sgd", "SAM->SGD > SGD (Table 5.2)"),
                            ("sgd-sam", "sam-sgd", "SGD->SAM >= SAM->SGD (Table 5.2, 7 of 8 cases)")]:
            iv = paired(acc[a], acc[b])
            out.append(f"| {claim} | test accuracy, {a} - {b}, points | {fmt(iv, 100)} | {verdict(iv, +1)} |")
        iv = paired(acc["psam"], acc["sam"])
        cost = {m: pick(sw, m, "passes") for m in ("psam", "sam")}
        ratio = statistics.fmean(cost["psam"].values()) / statistics.fmean(cost["sam"].values()) if cost["sam"] else float("nan")
        if iv is None or math.isnan(iv[1]):
            v = "inconclusive (n < 2)"
        elif iv[1] <= 0 <= iv[2]:
            v = "reproduced (no difference detected; the interval bounds it)"
        else:
            v = "not reproduced" if iv[2] < 0 else "PSAM better"
        out.append(f"| PSAM matches SAM at ~0.64 of its cost (Table 5.3) | test accuracy, psam - sam, points; cost psam/sam {ratio:.3f} | {fmt(iv, 100)} | {v} |")
    sr = rows("sam-rho")
    if sr:
        iv = paired(pick(sr, "sam-rho0.1", "test_acc"), pick(sr, "sgd", "test_acc"))
        out.append(f"| SAM > SGD at rho 0.1 (follow-up, sam-rho.ron) | test accuracy, sam(rho 0.1) - sgd, points | {fmt(iv, 100)} | {verdict(iv, +1)} |")
        if pick(sr, "sam-sgd-rho0.1", "test_acc"):
            iv = paired(pick(sr, "sam-sgd-rho0.1", "test_acc"), pick(sr, "sgd", "test_acc"))
            out.append(f"| SAM->SGD > SGD at rho 0.1 (follow-up, sam-rho.ron) | test accuracy, sam-sgd(rho 0.1) - sgd, points | {fmt(iv, 100)} | {verdict(iv, +1)} |")
    es = rows("escape")
    if es:
        budget = 200
        sgd, sgd_c = censored(es, "escape-sgd", budget, lr=0.04)
        if not sgd:
            es = None
    if es:
        rhos = ["0.05", "0.1", "0.2", "0.3", "0.5", "0.7"]
        sam = {r: censored(es, "escape-sam", budget, lr=0.04, rho=r) for r in rhos}
        means = ", ".join(f"rho {r}: {statistics.fmean(v[0].values()):.1f} ({v[1]} censored)" for r, v in sam.items() if v[0])
        out.append(f"| escape steps: SGD {statistics.fmean(sgd.values()):.1f} ({sgd_c} of {len(sgd)} censored at {budget}); SAM {means} | (means; censored runs count as {budget}) | | |")
        for r in rhos:
            iv = paired(sgd, sam[r][0])
            note = " (a lower bound: SGD runs censored)" if sgd_c else ""
            out.append(f"| SGD escapes slower than SAM at rho {r} (Table 5.1) | steps, SGD - SAM{note} | {fmt(iv)} | {verdict(iv, +1)} |")
        iv = paired(sam["0.05"][0], sam["0.7"][0])
        out.append(f"| escape steps fall with rho (Table 5.1) | steps, rho 0.05 - rho 0.7 | {fmt(iv)} | {verdict(iv, +1)} |")
    ls = rows("landscape")
    if ls:
        w1 = pick(ls, "sgd-to-sgd-sam", "train_loss_rise_w1")
        w2 = pick(ls, "sgd-to-sgd-sam", "train_loss_rise_w2")
        iv = paired(w2, w1)
        out.append(f"| the SGD->SAM end sits on the flatter side of the line (Figure 5.1) | train-loss rise at d = 0.5 around each end, SGD->SAM - SGD | {fmt(iv, 1)} | {verdict(iv, -1)} |")
        # the rise is a positive scale: its ratio, on the log scale (added
        # after the difference above came out inconclusive; say so)
        lr2 = {k: math.log(v) for k, v in w2.items() if v > 0}
        lr1 = {k: math.log(v) for k, v in w1.items() if v > 0}
        iv = paired(lr2, lr1)
        out.append(f"| (the same, as a ratio; scale chosen after seeing the line above) | ln(rise SGD->SAM / rise SGD) | {fmt(iv, 1)} | {verdict(iv, -1)} |")
        w1 = pick(ls, "sam-to-sam-sgd", "train_loss_rise_w1")
        w2 = pick(ls, "sam-to-sam-sgd", "train_loss_rise_w2")
        iv = paired(w2, w1)
        out.append(f"| (Figure 5.2) the SAM->SGD end against the SAM end | train-loss rise, SAM->SGD - SAM | {fmt(iv, 1)} | SAM->SGD {'sharper' if iv and iv[1] > 0 else ('flatter' if iv and iv[2] < 0 else 'no difference detected')} |")
    sh = rows("sharpness")
    if sh:
        for a, b, claim in [("sharpness-sgd-sam", "sharpness-sgd", "SGD->SAM ends flatter than SGD (Theorem 3.3.2)"),
                            ("sharpness-sam", "sharpness-sgd", "SAM ends flatter than SGD")]:
            for m in ("lambda_max", "trace", "sam_sharpness"):
                iv = paired(pick(sh, a, m), pick(sh, b, m))
                out.append(f"| {claim} | {m}, {a[10:]} - {b[10:]} | {fmt(iv)} | {verdict(iv, -1)} |")
        a = pick(sh, "asymmetry-sgd", "asymmetry_x")
        b = pick(sh, "asymmetry-sgd-sam", "asymmetry_x")
        if a and b:
            iv = paired(b, a)
            out.append(f"| (He et al.) valley asymmetry along random directions, SGD->SAM vs SGD | mean abs(A) over directions, SGD->SAM - SGD (paired by direction seed) | {fmt(iv, 1)} | descriptive |")
    ab = rows("ablation")
    if ab:
        lo, hi = pick(ab, "distance-rho", "distance", rho=0.02), pick(ab, "distance-rho", "distance", rho=0.8)
        iv = paired(hi, lo)
        out.append(f"| distance to SGD grows with rho (Figure 5.3a) | L2 distance, rho 0.8 - rho 0.02 | {fmt(iv)} | {verdict(iv, +1)} |")
        early, late = pick(ab, "distance-switch", "distance", switch_epoch=20), pick(ab, "distance-switch", "distance", switch_epoch=31)
        iv = paired(early, late)
        out.append(f"| distance grows with earlier switches (Figure 5.3b) | L2 distance, switch at epoch 20 - at 31 | {fmt(iv)} | {verdict(iv, +1)} |")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
