#!/usr/bin/env bash
# On a GPU machine, after `source scripts/gpu/setup.sh`: export the bundled checkpoint for the
# GPU, check that v1 = v2 = eager on 1,000 test texts, and run `moe bench` (single texts and
# batches of 32) against the in-process eager model on the GPU. Results in RESULTS (default
# $MOE_GPU_HOME/results), one folder per configuration:
#   1gpu          BLS on the GPU (activations stay there), every piece on GPU 0
#   1gpu-bls-cpu  the same pieces, the BLS on the CPU (each layer's activations cross to the host)
#   2gpu          experts spread over 2 GPUs (only with 2 GPUs), v1
#   scripts/gpu/run.sh RESULTS [CONFIG ...]      (default: every configuration the machine has)
set -euo pipefail
RESULTS=${1:-$MOE_GPU_HOME/results}
shift || true
GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')
CONFIGS=${*:-"1gpu 1gpu-bls-cpu $([ "$GPUS" -ge 2 ] && echo 2gpu)"}
REQUESTS=${REQUESTS:-300}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpus.csv"
moe() { python3 -m serving.cli "$@"; }

for config in $CONFIGS; do
  echo "=== $config ($(date +%T))"
  repo="$MOE_GPU_HOME/build-$config"
  case $config in
    1gpu)         moe export --device cuda --gpus 1 --out "$repo" >/dev/null; workflows=v1,v2 ;;
    1gpu-bls-cpu) moe export --device cuda --gpus 1 --bls-device cpu --out "$repo" >/dev/null; workflows=v1 ;;
    2gpu)         moe export --device cuda --gpus 2 --out "$repo" >/dev/null; workflows=v1 ;;
  esac
  if [ "$config" = 1gpu ] || [ "$config" = 2gpu ]; then
    moe serve --repository "$repo" --http-port 18000 --grpc-port 18001 --metrics-port 18002 > "$RESULTS/serve-$config.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf localhost:18000/v2/health/ready >/dev/null && break; sleep 1; done
    python3 scripts/gpu/check_answers.py --url 127.0.0.1:18000 --device cuda --out "$RESULTS/answers-$config.json" | tail -3 || true
    kill -INT $pid; wait $pid || true
  fi
  moe bench --repository "$repo" --device cuda --workflows $workflows --batch-size 1,32 --concurrency 1,16,64 \
      --requests "$REQUESTS" --targets gpu --out "$RESULTS/bench-$config" 2>&1 | grep -v "it/s\]" | tail -40
done
echo "=== done ($(date +%T))"
