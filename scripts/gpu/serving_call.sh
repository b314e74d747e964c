#!/usr/bin/env bash
# One GPU call's whole serving experiment, from the project's root on the GPU machine, with
# scripts/gpu/pack.sh's folder carried:
#
#   scripts/gpu/serving_call.sh OUT COMMIT [BUDGET_SECONDS]   (default 560)
#
# 1. set-up (scripts/gpu/setup.sh);
# 2. the default export served, its answers checked and benched (serve_bench.sh default);
# 3. the tokenizer stage's rate outside Triton, in 1 and 12 processes (scripts/tokenizer_rate.py);
# 4. full_model in process: precision variants, threads, kernels (full_model_profile.py), with
#    what is left of the budget.
# Everything lands in OUT/results.tar.xz (one file: the device returns at most eight).
set -uo pipefail
OUT_DIR=$1 COMMIT=$2 BUDGET=${3:-560}
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
R=/tmp/results
mkdir -p "$R"
echo "$COMMIT" > "$R/commit.txt"
pack() { tar -C /tmp -cJf "$OUT_DIR/results.tar.xz" results; }
trap pack EXIT
# shellcheck source=scripts/gpu/setup.sh
source scripts/gpu/setup.sh .devcarry/gpu > "$R/setup.log" 2>&1 || { tail -20 "$R/setup.log"; exit 1; }
echo "set-up done at $(($(date +%s) - start)) s"
SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-4} timeout $(($(left) - 130)) scripts/gpu/serve_bench.sh default "$R"
echo "bench done at $(($(date +%s) - start)) s"
timeout 40 python3 scripts/tokenizer_rate.py --processes 1,12 --seconds 4 --out "$R/tokenizer_rate.json"
timeout $(($(left) - 15)) python3 scripts/gpu/full_model_profile.py --out "$R/full_model_profile.json" \
  > "$R/profile.log" 2>&1
echo "profile exit $? at $(($(date +%s) - start)) s"
grep -h '^{' "$R/profile.log" | cut -c1-300
