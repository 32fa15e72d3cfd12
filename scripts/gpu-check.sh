#!/usr/bin/env bash
# One check of the CUDA build on a lent GPU machine, within 8 minutes: every
# step's time limit is also cut to what is left of SAMLAB_CHECK_BUDGET_S
# (default 450 s), so the table is always written.
#   1. CPU/CUDA parity of ResNet-8 logits and gradients (same weights and
#      batch), f32 and bf16 autocast;
#   2. samlab SGD and SAM training steps at batch 256, ResNet-18 and
#      WRN-28-10, f32 and bf16, data on the device; and ResNet-18 f32 once
#      more with candle's own convolution backward (SAMLAB_CONV_GRAD=candle),
#      to measure what the cuDNN-served backward (models/src/device_conv.rs)
#      is worth;
#   2b. the thesis' step of 256 images as 8 devices of 32 (m = 32), ResNet-18
#      f32: samlab's sequential ghost-batch form against the batched one
#      (optim/src/batched.rs), SGD and SAM, alternating rounds
#      (optim/examples/batched_step.rs, as dist/batched_step; see step 2b);
#   3. the same steps in PyTorch on the same GPU (bench/torch_step.py: cuDNN
#      benchmark mode, channels_last, autocast for bf16), and ratios;
#   4. a short real study on CUDA, end to end; its epochs' wall time against
#      the step rate of 2. says what the runner's loop costs beyond the steps;
#   5. the rates as results/gpu/rates.csv, and the GPU-hours of every
#      paper-scale study (`runner plan`) in f32, and with bf16's rates;
#   6. if time is left, f32 rates of PyramidNet-110 and PreAct-ResNet-164
#      (the thesis' other two models), so that every study gets hours.
# Epoch times are 50,000 / (images per second): CIFAR-10's training split
# at the measured step rate, not a timed epoch (step 4 times real ones).
# Needs dist/ from scripts/build-cuda.sh and the CIFAR-10 JPEG archive
# ($SAMLAB_CIFAR10, else shared/data/ or ../shared/data/ or dist/data/).
# To carry it to a GPU machine within 64 MiB, keep dist/run.sh,
# dist/runner.xz, dist/runner-nocudnn.xz and dist/batched_step.xz
# (unpacked here when missing)
# and dist/data/cifar10-jpeg.tar.gz, and leave the unpacked binaries behind.
# Writes its table to $OUT/gpu-check.md when OUT is set (and always prints
# it), its log to $OUT/gpu-check.log, and the rates to $OUT/rates.csv
# (commit both under results/gpu/).
# For trying the script itself on a machine without a GPU:
#   SAMLAB_CHECK_RUNNER=target/release/runner SAMLAB_CHECK_DEVICE=cpu \
#   SAMLAB_CHECK_BUDGET_S=120 scripts/gpu-check.sh
# (the steps time out; the table, rates and hours are still written).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
log=$out/gpu-check.log
: > "$log"
start=$(date +%s)
budget=${SAMLAB_CHECK_BUDGET_S:-450}
say() { echo "== $*" | tee -a "$log" >&2; }
left() { echo $((budget - ($(date +%s) - start))); }
limit() { # limit WANTED_S [RESERVE_S]: the seconds a step may take now
  local l; l=$(($(left) - ${2:-0}))
  [ "$l" -lt "$1" ] && echo $((l > 1 ? l : 1)) || echo "$1"
}
dev=${SAMLAB_CHECK_DEVICE:-cuda}
runner=${SAMLAB_CHECK_RUNNER:-dist/run.sh}
binary="runner (cuDNN)"
if [ -z "${SAMLAB_CHECK_RUNNER:-}" ]; then
  for b in runner runner-nocudnn; do
    if [ ! -x dist/$b ] && [ -f dist/$b.xz ]; then
      xz -dkf dist/$b.xz && chmod +x dist/$b
    fi
  done
  [ -x "$runner" ] && [ -x dist/runner ] || { echo "dist/run.sh is missing: build it with scripts/build-cuda.sh" >&2; exit 1; }
  # Where cuDNN cannot be loaded, the binary built without it.
  if ! probe=$(timeout 30 "$runner" device "$dev" 2>&1) && grep -qi cudnn <<<"$probe" && [ -x dist/runner-nocudnn ]; then
    echo "cuDNN binary failed: $probe" >>"$log"
    export SAMLAB_RUNNER_BIN=runner-nocudnn
    binary="runner-nocudnn (cuDNN failed to load: $(head -c 200 <<<"$probe" | tr '\n' ' '))"
  fi
fi

card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
say "card: ${card:-unknown}"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
torch_version=$(python3 -c 'import torch; print(torch.__version__, "cuDNN", torch.backends.cudnn.version())' 2>/dev/null)

say "1. device and parity"
timeout "$(limit 20)" "$runner" device "$dev" >>"$log" 2>&1; dev_rc=$?
# f32: cuDNN's default math lets f32 convolutions use TF32 on this card (as
# PyTorch's default does), hence 1e-2 rather than the CLI's 1e-3.
parity_f32=$(timeout "$(limit 40)" "$runner" check-parity "$dev" --model resnet8 --batch 16 --tolerance 1e-2 2>&1); pf_rc=$?
# bf16: the bounds of models/src/precision.rs's test (largest gradient 35%).
parity_bf16=$(timeout "$(limit 40)" "$runner" check-parity "$dev" --model resnet8 --batch 16 --precision bf16 --tolerance 0.35 2>&1); pb_rc=$?
echo "$parity_f32" "$parity_bf16" >>"$log"

say "2. samlab steps"
bench() { # bench MODEL PRECISION STEPS LIMIT [ENV...]
  env "${@:5}" timeout "$(limit "$4" 150)" "$runner" bench-step "$dev" --model "$1" --precision "$2" \
    --batch 256 --warmup 2 --steps "$3" 2>>"$log" | tail -1
}
declare -A s
s[resnet18 f32]=$(bench resnet18 f32 10 60)
s[resnet18 bf16]=$(bench resnet18 bf16 10 60)
s[wrn28-10 f32]=$(bench wrn28-10 f32 5 80)
s[wrn28-10 bf16]=$(bench wrn28-10 bf16 5 80)
s_candle=$(bench resnet18 f32 5 40 SAMLAB_CONV_GRAD=candle)
for k in "${!s[@]}"; do echo "$k: ${s[$k]}" >>"$log"; done
echo "candle backward: $s_candle" >>"$log"

say "2b. the batched paper step"
# dist/batched_step is built beside the runner by scripts/build-cuda.sh
# (its step 4: optim's batched_step example, same features and target
# folder) and runs through dist/run.sh (which finds the CUDA libraries). For trying
# this script on a CPU: SAMLAB_CHECK_BATCHED=target/release/examples/batched_step
# (and SAMLAB_CHECK_BATCHED_ARGS, below).
batched_cmd=()
if [ -n "${SAMLAB_CHECK_BATCHED:-}" ]; then
  batched_cmd=("$SAMLAB_CHECK_BATCHED")
else
  if [ ! -x dist/batched_step ] && [ -f dist/batched_step.xz ]; then
    xz -dkf dist/batched_step.xz && chmod +x dist/batched_step
  fi
  [ -x dist/batched_step ] && [ -x dist/run.sh ] && batched_cmd=(env SAMLAB_RUNNER_BIN=batched_step dist/run.sh)
fi
if [ ${#batched_cmd[@]} -gt 0 ]; then
  # SAMLAB_CHECK_BATCHED_ARGS replaces the protocol's arguments (a smaller
  # net for trying the script on a CPU).
  read -r -a batched_args <<<"${SAMLAB_CHECK_BATCHED_ARGS:---model resnet18 --batch 256 --bn-batch 32 --chunk 32 --rounds 3 --steps 2}"
  batched=$(timeout "$(limit 90 150)" "${batched_cmd[@]}" --device "$dev" "${batched_args[@]}" 2>>"$log" |
    tee -a "$log" | tail -1)
  batched_rc=$?
else
  batched=""; batched_rc=127
  echo "no dist/batched_step: build it as step 2b's comment says" >>"$log"
fi

say "3. PyTorch steps"
t_all=$(timeout "$(limit 100 120)" "${PYTHON:-python3}" bench/torch_step.py --device "$dev" --batch 256 --warmup 3 --steps 10 \
  --precision f32 bf16 resnet18 wrn28-10 2>>"$log")
echo "$t_all" >>"$log"
declare -A t
for m in resnet18 wrn28-10; do
  for p in f32 bf16; do
    t[$m $p]=$(grep "\"model\": \"$m\"" <<<"$t_all" | grep "\"precision\": \"$p\"")
  done
done

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
        "base": Train(model: "resnet18", train_subset: PerClass(500), batch: 256, epochs: 3,
                      lr: Cosine(lr: 0.1), sam: (rho: 0.05), test_subset: PerClass(100)),
    },
    stages: {
        "sgd": Train(extends: "base"),
        "sgd-bf16": Train(extends: "base", precision: Bf16),
        "sgd-sam": Train(extends: "base", method: Switch(from: Sgd, to: Sam, at: Fraction(0.67))),
        "escape": Escape(of: "sgd", method: Sam, sam: (rho: 0.5), lr: 0.03, batch: 256, probe: 500,
                         threshold: 0.2, max_steps: 20),
    },
)
RON
if [ -n "$data" ]; then
  SAMLAB_CIFAR10=$data SAMLAB_DATA_DIR=$out/data SAMLAB_CACHE_DIR=$out/cache \
    timeout "$(limit 120 40)" "$runner" "$study" --device "$dev" --results-dir "$out/study" --keep-going -q >>"$log" 2>&1
  study_rc=$?
else
  echo "no CIFAR-10 archive found" >>"$log"; study_rc=127
fi
# Images/s of the runner's epochs 2-3 (epoch 1 includes warm-up), from the
# stage's metrics (results/.../stages/STAGE.csv: epoch,step,...,wall_s).
loop_rate() { # loop_rate STAGE
  local f=$out/study/stages/$1.csv
  [ -f "$f" ] && awk -F, 'NR > 2 { steps += $2 - prev; wall += $8 } NR > 1 { prev = $2 }
    END { if (wall > 0) printf "%.1f", steps * 256 / wall }' "$f"
}
loop_sgd=$(loop_rate sgd)
loop_bf16=$(loop_rate sgd-bf16)

field() { sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "-" }'; }
epoch_s() { awk -v r="$1" 'BEGIN { if (r > 0) printf "%.1f", 50000 / r; else print "-" }'; }

say "5. rates and GPU-hours"
rate_row() { # rate_row MODEL PRECISION BENCH_JSON: a rates.csv line, if measured
  local s1 s2; s1=$(field "$3" sgd_img_s); s2=$(field "$3" sam_img_s)
  [ -n "$s1" ] && echo "$dev,$1,$2,256,$s1,${s2:-},${card%%,*},$(date -u +%Y-%m-%d)"
  return 0
}
{
  echo "device,model,precision,batch,sgd_img_s,sam_img_s,card,measured"
  for k in "resnet18 f32" "resnet18 bf16" "wrn28-10 f32" "wrn28-10 bf16"; do
    rate_row "${k% *}" "${k#* }" "${s[$k]}"
  done
} > "$out/rates.csv"

say "6. other models, if time is left"
for m in pyramidnet110 preactresnet164; do
  [ "$(left)" -gt 90 ] || break
  j=$(bench "$m" f32 3 60)
  echo "$m f32: $j" >>"$log"
  rate_row "$m" f32 "$j" >> "$out/rates.csv"
done
# The same rates with bf16's in f32's place: what a study would take in bf16.
awk -F, -v OFS=, 'NR == 1 { print; next } $3 == "bf16" { $3 = "f32"; print }' "$out/rates.csv" > "$out/rates-bf16.csv"
plan_line() { # plan_line STUDY RATES: `runner plan`'s GPU-hours line
  timeout 20 "$runner" plan "$1" --rates "$2" 2>/dev/null | grep 'GPU-hours' | head -1
}
hours() { grep -o 'about [0-9.]* GPU-hours' <<<"$1" | grep -o '[0-9.]*' | head -1; }

{
  echo "# GPU check"
  echo
  echo "Card: ${card:-unknown}. Commit $commit. Binary: $binary. PyTorch ${torch_version:-unknown}. $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  echo "- runner device $dev: exit $dev_rc"
  echo "- parity f32 (ResNet-8, batch 16, CPU f32 vs CUDA f32, tolerance 1e-2): exit $pf_rc"
  sed 's/^/    /' <<<"$parity_f32"
  echo "- parity bf16 (CUDA bf16 vs CPU bf16, then vs CPU f32 against tolerance 0.35): exit $pb_rc"
  sed 's/^/    /' <<<"$parity_bf16"
  echo "- short study on CUDA (ResNet-18 on 5,000 images: SGD, SGD bf16, SGD->SAM, Escape): exit $study_rc"
  echo
  echo "Training at batch 256, data on the device. Epoch = 50,000 images at the measured"
  echo "step rate; x torch = samlab epoch time / PyTorch's (above 1: samlab is slower)."
  echo
  echo "| model | precision | method | samlab img/s | samlab epoch s | torch img/s | torch epoch s | x torch |"
  echo "|---|---|---|---|---|---|---|---|"
  for k in "resnet18 f32" "resnet18 bf16" "wrn28-10 f32" "wrn28-10 bf16"; do
    for meth in sgd sam; do
      a=$(field "${s[$k]}" "${meth}_img_s"); b=$(field "${t[$k]}" "${meth}_img_s")
      echo "| ${k% *} | ${k#* } | ${meth^^} | ${a:--} | $(epoch_s "$a") | ${b:--} | $(epoch_s "$b") | $(ratio "$b" "$a") |"
    done
  done
  echo
  echo "Batched paper step (ResNet-18 f32, 256 images as 8 slices of 32, SAM with m = 32; exit $batched_rc):"
  echo "sequential / batched step time (above 1: batched is faster; the median over alternating rounds, arguments: ${batched_args[*]:-none run}):"
  bf() { local v; v=$(field "$batched" "$1"); echo "${v:--}"; }
  echo "SGD $(bf sgd_sequential_s) vs $(bf sgd_batched_s) s ($(bf sgd_ratio)),"
  echo "SAM $(bf sam_sequential_s) vs $(bf sam_batched_s) s ($(bf sam_ratio))."
  echo
  a=$(field "${s[resnet18 f32]}" sgd_img_s); b=$(field "$s_candle" sgd_img_s)
  a2=$(field "${s[resnet18 f32]}" sam_img_s); b2=$(field "$s_candle" sam_img_s)
  echo "Convolution backward as forward convolutions (cuDNN) vs candle's own (conv_transpose2d),"
  echo "ResNet-18 f32: SGD ${a:--} vs ${b:--} img/s ($(ratio "$a" "$b")x), SAM ${a2:--} vs ${b2:--} ($(ratio "$a2" "$b2")x)."
  echo
  echo "SAM/SGD step time: samlab ResNet-18 f32 $(ratio "$a" "$a2"), PyTorch $(ratio "$(field "${t[resnet18 f32]}" sgd_img_s)" "$(field "${t[resnet18 f32]}" sam_img_s)")."
  echo
  echo "Runner loop (short study, epochs 2-3) vs bench-step, ResNet-18 SGD: f32 ${loop_sgd:--} vs ${a:--} img/s ($(ratio "$loop_sgd" "$a")),"
  echo "bf16 ${loop_bf16:--} vs $(field "${s[resnet18 bf16]}" sgd_img_s) img/s ($(ratio "$loop_bf16" "$(field "${s[resnet18 bf16]}" sgd_img_s)")). Below 1: the loop costs beyond the steps."
  echo
  echo "GPU-hours of each paper-scale study at these rates (\`runner plan\`; f32 is the thesis' setting):"
  echo
  echo "| study | f32 | bf16 | not counted |"
  echo "|---|---|---|---|"
  for f in studies/*.ron; do
    f32=$(plan_line "$f" "$out/rates.csv"); bf16=$(plan_line "$f" "$out/rates-bf16.csv")
    echo "| $(basename "$f" .ron) | $(hours "$f32") | $(hours "$bf16") | $(sed -n 's/.*no rate for //p' <<<"$f32") |"
  done
  if [ -f "$out/study/summary.md" ]; then
    echo
    sed -n '/^## /,$p' "$out/study/summary.md"
  fi
  echo
  echo "Total time of this check: $(($(date +%s) - start)) s."
} | tee "$out/gpu-check.md"
