#!/usr/bin/env bash
# On a GPU machine, after `source scripts/gpu/setup.sh`: scripts/gpu/serve_bench.sh (export,
# v1 = v2 = eager on 1,000 test texts, `moe bench` with wrk) for each configuration asked.
# Results in RESULTS (default $MOE_GPU_HOME/results):
#   1gpu          every piece and the BLS on GPU 0: activations stay on the GPU (v1 and v2)
#   1gpu-bls-cpu  the same pieces, the BLS on the CPU: each layer's activations cross to the host
#   2gpu          experts spread over 2 GPUs and full_model on both, the BLS on GPU 0 (only with 2 GPUs)
#   1gpu-expert-calls, 2gpu-expert-calls  as 1gpu and 2gpu, each busy expert called on its own
#                 instead of through the experts ensemble (v1; named only)
#   scripts/gpu/run.sh RESULTS [CONFIG ...]      (default: every configuration the machine has)
set -uo pipefail
RESULTS=${1:-$MOE_GPU_HOME/results}
shift || true
GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')
CONFIGS=${*:-"1gpu 1gpu-bls-cpu $([ "$GPUS" -ge 2 ] && echo 2gpu)"}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpus.csv"
for config in $CONFIGS; do
  workflows=v2,v1 args="--gpus 1"
  case $config in
    1gpu-bls-cpu) workflows=v1 args="--gpus 1 --bls-device cpu" ;;
    2gpu) args="--gpus 2" ;;
    1gpu-expert-calls) workflows=v1 args="--gpus 1 --expert-fanout calls" ;;
    2gpu-expert-calls) workflows=v1 args="--gpus 2 --expert-fanout calls" ;;
  esac
  WORKFLOWS=$workflows scripts/gpu/serve_bench.sh "$config" "$RESULTS" $args
done
echo "=== done ($(date +%T))"
