#!/usr/bin/env bash
# One check of the CUDA build on a lent GPU machine, within 8 minutes (the
# per-step timeouts add up to 450 s: 20 + 50 + 2 x 80 + 100 + 120):
#   1. CPU/CUDA parity of ResNet-8 logits and gradients (same weights, batch);
#   2. SGD and SAM train-step images/s, batch 256, ResNet-18 and WRN-28-10;
#   3. the same with PyTorch on the same GPU (bench/torch_step.py), and ratios;
#   4. a short real study on CUDA, end to end.
# Needs dist/ from scripts/build-cuda.sh and the CIFAR-10 JPEG archive
# ($SAMLAB_CIFAR10, else shared/data/ or ../shared/data/ or dist/data/).
# To carry it to a GPU machine within 64 MiB, keep dist/run.sh,
# dist/runner.xz (unpacked here when dist/runner is missing) and
# dist/data/cifar10-jpeg.tar.gz, and leave dist/runner (53 MB) behind.
# Writes its table to $OUT/gpu-check.md when OUT is set (and always prints it),
# and the measured rates to $OUT/rates.csv (commit as results/gpu/rates.csv:
# `runner plan` turns them into GPU-hours).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
log=$out/gpu-check.log
: > "$log"
say() { echo "== $*" | tee -a "$log" >&2; }
run() { # run LIMIT_S CMD...: output to the log, exit code back
  timeout "$1" "${@:2}" >>"$log" 2>&1
}
runner=dist/run.sh
if [ ! -x dist/runner ] && [ -f dist/runner.xz ]; then
  xz -dkf dist/runner.xz && chmod +x dist/runner
fi
[ -x "$runner" ] && [ -x dist/runner ] || { echo "dist/run.sh is missing: build it with scripts/build-cuda.sh" >&2; exit 1; }

card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
say "card: ${card:-unknown}"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

say "1. device and parity"
run 20 "$runner" device cuda; dev_rc=$?
parity=$(timeout 50 "$runner" check-parity cuda --model resnet8 --batch 16 2>&1); parity_rc=$?
echo "$parity" >>"$log"

say "2. samlab steps"
bench() { timeout 80 "$runner" bench-step cuda --model "$1" --batch 256 --warmup 2 --steps "$2" 2>>"$log" | tail -1; }
s_r18=$(bench resnet18 10)
s_wrn=$(bench wrn28-10 5)
echo "$s_r18" "$s_wrn" >>"$log"

say "3. PyTorch steps"
t_all=$(timeout 100 python3 bench/torch_step.py --device cuda --batch 256 --warmup 2 --steps 10 resnet18 wrn28-10 2>>"$log")
echo "$t_all" >>"$log"
t_r18=$(grep '"resnet18"' <<<"$t_all")
t_wrn=$(grep '"wrn28-10"' <<<"$t_all")

say "4. a short study on CUDA"
data=${SAMLAB_CIFAR10:-}
for d in shared/data ../shared/data dist/data; do
  [ -z "$data" ] && [ -f "$d/cifar10-jpeg.tar.gz" ] && data=$d/cifar10-jpeg.tar.gz
done
study=$out/gpu-study.ron
cat > "$study" <<'RON'
Study(
    version: 1,
    dataset: "cifar10",
    device: "cuda",
    blocks: {
        "base": Train(model: "resnet18", train_subset: PerClass(200), batch: 256, epochs: 4,
                      lr: Cosine(lr: 0.1), sam: (rho: 0.05), test_subset: PerClass(100)),
    },
    stages: {
        "sgd": Train(extends: "base"),
        "sgd-sam": Train(extends: "base", method: Switch(from: Sgd, to: Sam, at: Fraction(0.75))),
        "escape": Escape(of: "sgd", method: Sam, sam: (rho: 0.5), lr: 0.03, batch: 256, probe: 500,
                         threshold: 0.2, max_steps: 20),
    },
)
RON
if [ -n "$data" ]; then
  SAMLAB_CIFAR10=$data SAMLAB_DATA_DIR=$out/data SAMLAB_CACHE_DIR=$out/cache \
    timeout 120 "$runner" "$study" --results-dir "$out/study" --keep-going -q >>"$log" 2>&1
  study_rc=$?
else
  echo "no CIFAR-10 archive found" >>"$log"; study_rc=127
fi

field() { sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "-" }'; }
row() { # row NAME SAMLAB_JSON TORCH_JSON
  local s1 s2 t1 t2
  s1=$(field "$2" sgd_img_s); s2=$(field "$2" sam_img_s)
  t1=$(field "$3" sgd_img_s); t2=$(field "$3" sam_img_s)
  echo "| $1 | ${s1:--} | ${s2:--} | $(ratio "$s1" "$s2") | ${t1:--} | ${t2:--} | $(ratio "$s1" "$t1") | $(ratio "$s2" "$t2") |"
}
{
  echo "# GPU check"
  echo
  echo "Card: ${card:-unknown}. Commit $commit. $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  echo "- runner device cuda: exit $dev_rc"
  echo "- parity (ResNet-8, batch 16, CPU f32 vs CUDA f32): ${parity:-none} (exit $parity_rc)"
  echo "- short study on CUDA (ResNet-18, SGD, SGD->SAM, Escape): exit $study_rc"
  echo
  echo "Training steps, batch 256, images/s (SAM/SGD is the step-time ratio; x torch is samlab / PyTorch):"
  echo
  echo "| model | samlab SGD | samlab SAM | SAM/SGD | torch SGD | torch SAM | SGD x torch | SAM x torch |"
  echo "|---|---|---|---|---|---|---|---|"
  row resnet18 "$s_r18" "$t_r18"
  row wrn28-10 "$s_wrn" "$t_wrn"
  if [ -f "$out/study/summary.md" ]; then
    echo
    sed -n '/^## /,$p' "$out/study/summary.md"
  fi
} | tee "$out/gpu-check.md"

# The rates `runner plan` turns into GPU-hours (commit as results/gpu/rates.csv).
{
  echo "device,model,batch,sgd_img_s,sam_img_s,card,measured"
  for pair in "resnet18:$s_r18" "wrn28-10:$s_wrn"; do
    m=${pair%%:*}; j=${pair#*:}
    s1=$(field "$j" sgd_img_s); s2=$(field "$j" sam_img_s)
    [ -n "$s1" ] && echo "cuda,$m,256,$s1,${s2:-},${card%%,*},$(date -u +%Y-%m-%d)"
  done
} > "$out/rates.csv"
