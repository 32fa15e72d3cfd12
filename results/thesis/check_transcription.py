#!/usr/bin/env python3
"""Checks results/thesis/tables.csv against the thesis text, number by number.

    python3 results/thesis/check_transcription.py [THESIS.txt]

(default: ../shared/thesis/000_f90d9284eb806759.txt from the repository
root). Reads the rows of Tables 5.1-5.3 as the text prints them (one line per
method, `mean \\pm std` per model in the order ResNet-18, PreAct-ResNet-164,
WRN-28-10, PyramidNet-110) and prints every disagreement with the CSV; exits 1
if there is one, or if a table does not have the expected number of rows.
"""
import csv
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
thesis = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "../shared/thesis/000_f90d9284eb806759.txt"
lines = thesis.read_text().splitlines()
models = ["resnet18", "preactresnet164", "wrn28-10", "pyramidnet110"]
pair = re.compile(r"([0-9.]+) \\pm ([0-9.]+)")


def table_lines(caption):
    """The lines from the caption `Table X:` to the next blank-line-separated paragraph."""
    start = next(i for i, l in enumerate(lines) if l.startswith(caption))
    out = []
    for l in lines[start + 1:]:
        if out and not l.strip():
            break
        out.append(l)
    return out


found = {}
# Table 5.1: "SGD\t...", "SAM ($\rho = 0.05$)\t..."
for l in table_lines("Table 5.1:"):
    nums = pair.findall(l)
    if len(nums) != 4:
        continue
    m = re.match(r"SAM \(\$\\rho = ([0-9.]+)\$\)", l)
    method, setting = ("SAM", f"rho={m.group(1)}") if m else (l.split("\t")[0].strip(), "")
    for model, (mu, sd) in zip(models, nums):
        found[("5.1", "cifar10", model, method, setting)] = (mu, sd)
# Tables 5.2 and 5.3: "CIFAR-10\tSGD\t...", "\tSAM\t...", "\tSGD \rightarrow SAM\t..."
for table in ["5.2", "5.3"]:
    dataset = None
    for l in table_lines(f"Table {table}:"):
        cells = [c.strip() for c in l.split("\t")]
        if cells and cells[0] in ("CIFAR-10", "CIFAR-100"):
            dataset = cells[0].lower().replace("-", "")
        nums = pair.findall(l)
        if len(nums) != 4:
            continue
        method = cells[1].replace(" \\rightarrow ", "->")
        setting = "n=20" if method == "PSAM" else ""
        for model, (mu, sd) in zip(models, nums):
            found[(table, dataset, model, method, setting)] = (mu, sd)

csv_rows = list(csv.DictReader(open(root / "results/thesis/tables.csv")))
bad = 0
seen = set()
for r in csv_rows:
    k = (r["table"], r["dataset"], r["model"], r["method"], r["setting"])
    seen.add(k)
    if k not in found:
        print("not in the text:", k)
        bad += 1
    elif found[k] != (r["mean"], r["std"]):
        print("differs:", k, "text", found[k], "csv", (r["mean"], r["std"]))
        bad += 1
for k in sorted(set(found) - seen):
    print("not in the CSV:", k, found[k])
    bad += 1
counts = {t: sum(1 for k in found if k[0] == t) for t in ("5.1", "5.2", "5.3")}
print(f"{len(csv_rows)} CSV rows, {len(found)} numbers pairs in the text {counts}, {bad} problems")
if counts != {"5.1": 28, "5.2": 32, "5.3": 24}:
    bad += 1
sys.exit(1 if bad else 0)
