#!/usr/bin/env bash
# Do the committed results still belong to the code? For every study under
# studies/quick and studies/medium with a results folder, compares the keys
# its summary.csv records (first 12 hex digits) with the keys `runner plan`
# computes now. A refactor that means to change no key must print "same"
# for every study. Needs the dataset (SAMLAB_CIFAR10, default the JPEG copy
# in ../shared/data) and a built runner (RUNNER, default target/debug/runner).
set -euo pipefail
cd "$(dirname "$0")/.."
runner=${RUNNER:-target/debug/runner}
export SAMLAB_CIFAR10=${SAMLAB_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
export SAMLAB_CACHE_DIR=${SAMLAB_CACHE_DIR:-$(mktemp -d)}
status=0
for s in studies/quick/*.ron studies/medium/*.ron; do
  r=results/${s#studies/}; r=${r%.ron}
  [ -f "$r/summary.csv" ] || { echo "skip  $s (no results)"; continue; }
  col=$(head -1 "$r/summary.csv" | tr ',' '\n' | grep -n '^key$' | cut -d: -f1)
  want=$(tail -n +2 "$r/summary.csv" | cut -d, -f"$col" | cut -c1-12 | sort)
  got=$("$runner" plan "$s" | tail -n +3 | grep -oE ' [0-9a-f]{12} ' | tr -d ' ' | sort)
  if [ "$want" == "$got" ]; then
    echo "same  $s ($(echo "$want" | wc -l) keys)"
  else
    echo "DIFF  $s"; diff <(echo "$want") <(echo "$got") | head -5 || true; status=1
  fi
done
exit $status
