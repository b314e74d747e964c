#!/usr/bin/env bash
# On a GPU machine, after `source scripts/gpu/setup.sh`: export the bundled checkpoint for the
# GPU, check that v1 = v2 = eager on 1,000 test texts, and run `moe bench` (single texts and
# batches of 32) against the in-process eager model on the GPU. Results in RESULTS (default
# $MOE_GPU_HOME/results), per configuration:
#   1gpu          every piece and the BLS on GPU 0: activations stay on the GPU (v1 and v2)
#   1gpu-bls-cpu  the same pieces, the BLS on the CPU: each layer's activations cross to the host
#   2gpu          experts spread over 2 GPUs, the BLS on GPU 0 (v1; only with 2 GPUs)
#   1gpu-expert-calls, 2gpu-expert-calls  as 1gpu and 2gpu, each busy expert called on its own
#                 instead of through the experts ensemble (v1; named only)
#   scripts/gpu/run.sh RESULTS [CONFIG ...]      (default: every configuration the machine has)
set -uo pipefail
RESULTS=${1:-$MOE_GPU_HOME/results}
shift || true
GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')
CONFIGS=${*:-"1gpu 1gpu-bls-cpu $([ "$GPUS" -ge 2 ] && echo 2gpu)"}
REQUESTS=${REQUESTS:-200}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpus.csv"

for config in $CONFIGS; do
  echo "=== $config ($(date +%T))"
  repo="$MOE_GPU_HOME/build-$config"
  export_args="--device cuda --gpus 1" workflows=v1,v2 concurrency=1,16,64 requests=$REQUESTS
  case $config in
    1gpu-bls-cpu) export_args="--device cuda --gpus 1 --bls-device cpu" workflows=v1 concurrency=1,64 requests=$((REQUESTS / 2)) ;;
    2gpu)         export_args="--device cuda --gpus 2" workflows=v1 ;;
    1gpu-expert-calls) export_args="--device cuda --gpus 1 --expert-fanout calls" workflows=v1 ;;
    2gpu-expert-calls) export_args="--device cuda --gpus 2 --expert-fanout calls" workflows=v1 ;;
  esac
  python3 -m serving.cli export $export_args --out "$repo" > /dev/null 2>&1 || { echo "export failed"; continue; }
  python3 -m serving.cli serve --repository "$repo" --http-port 18000 --grpc-port 18001 --metrics-port 18002 \
      > "$RESULTS/serve-$config.log" 2>&1 &
  pid=$!
  for _ in $(seq 120); do curl -sf localhost:18000/v2/health/ready > /dev/null && break; sleep 1; done
  timeout 120 python3 scripts/gpu/check_answers.py --url 127.0.0.1:18000 --device cuda \
      --out "$RESULTS/answers-$config.json" > "$RESULTS/answers-$config.log" 2>&1
  echo "answers: $(grep -o '"ok": [a-z]*' "$RESULTS/answers-$config.json" 2>/dev/null || tail -2 "$RESULTS/answers-$config.log")"
  log=$(grep -o 'log: [^)]*' "$RESULTS/serve-$config.log" | cut -c6-)
  kill -TERM $pid; timeout 60 tail --pid=$pid -f /dev/null
  [ -f "$log" ] && cp "$log" "$RESULTS/tritonserver-$config.log"
  timeout 240 python3 -m serving.cli bench --repository "$repo" --device cuda --workflows $workflows \
      --batch-size 1,32 --concurrency $concurrency --requests $requests --targets gpu \
      --out "$RESULTS/bench-$config" --server-log "$RESULTS/tritonserver-bench-$config.log" \
      > "$RESULTS/bench-$config.log" 2>&1
  grep "^| " "$RESULTS/bench-$config.log" | head -30
done
echo "=== done ($(date +%T))"
