#!/usr/bin/env bash
# The CPU convolution paths against each other, per network, in one command:
#   cargo build --release -p samlab-models --example profile_step
#   bench/conv_ab.sh [ROUNDS]
#   MODES="col2im all" NETS="resnet8:10:25" bench/conv_ab.sh [ROUNDS]
# For each round, network and path (the values of SAMLAB_CPU_CONV in MODES,
# default "im2col all": im2col + gemm everywhere against `all`, the default,
# every kernel where it applies; `col2im`: all but the strided input
# gradient's, which goes through gemm + col2im), the
# fastest training step and the fastest evaluation forward of one
# profile_step run (batch 128; the first two steps of each run are warm-up
# and left out). The two paths alternate, so a slow phase of a shared
# machine hits both. docs/cpu-profile.md has a run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${PROFILE_STEP:-$root/target/release/examples/profile_step}
rounds=${1:-2}
modes=${MODES:-im2col all}
# net:training steps:evaluation forwards
nets=${NETS:-resnet8:10:25 resnet20:6:12 wrn16-2:4:8 resnet18:3:5}
echo "round net path train_s eval_s"
for r in $(seq "$rounds"); do
  for net in $nets; do
    IFS=: read -r n ts es <<< "$net"
    for mode in $modes; do
      val=$mode
      [ "$mode" = all ] && val=
      t=$(SAMLAB_CPU_CONV=$val "$bin" "$n" 128 "$ts" 2>&1 | tail -n +3 | awk '{print $(NF-1)}' | sort -n | head -1)
      e=$(SAMLAB_CPU_CONV=$val "$bin" "$n" 128 "$es" eval 2>&1 | tail -n +3 | awk '{print $(NF-1)}' | sort -n | head -1)
      echo "$r $n $mode $t $e"
    done
  done
done
