#!/usr/bin/env bash
# On a GPU machine, after `source scripts/gpu/setup.sh`: one export of the bundled checkpoint,
# its answers checked (v1 = v2 = eager on 1,000 test texts), then `moe bench` with wrk (single
# texts and batches of 32) while GPU utilisation, each process's CPU and tritonserver's CPU by
# thread (thread_cpu.py) are sampled.
#
#   scripts/gpu/serve_bench.sh NAME RESULTS [EXPORT OPTIONS ...]
#     e.g. scripts/gpu/serve_bench.sh default $OUT/results
#          WORKFLOWS=v2 scripts/gpu/serve_bench.sh tok8 $OUT/results --tokenizer-instances 8
# Environment: WORKFLOWS (v2,v1), CONCURRENCY (1,64,256), BATCH_SIZES (1,32), SECONDS_PER_LEVEL (5),
# CHECK (1: check answers first: v1's probabilities within 1e-4 of eager, v2's too or, for a
# half-precision v2, within the export's gate), FROM (serve an earlier step's export, named, instead
# of exporting), BENCH_OPTIONS (more options of moe bench, e.g. "--http-threads 32").
set -uo pipefail
NAME=$1 RESULTS=$2
shift 2
mkdir -p "$RESULTS"
repo="$MOE_GPU_HOME/build-${FROM:-$NAME}"
if [ -z "${FROM:-}" ]; then
  echo "=== $NAME: export $* ($(date +%T))"
  python3 -m serving.cli export --device cuda --out "$repo" "$@" > "$RESULTS/export-$NAME.log" 2>&1 \
    || { echo "export failed"; tail -5 "$RESULTS/export-$NAME.log"; exit 1; }
else
  echo "=== $NAME: $FROM's export, bench ${BENCH_OPTIONS:-} ($(date +%T))"
fi
grep -h "count:\|max_batch_size\|threads" "$repo"/model_repository/{tokenizer,full_model,postprocessing,moe_bls}/config.pbtxt \
  | grep -v "^#" > "$RESULTS/sizing-$NAME.txt"
# v2's probabilities are checked within the half-precision gate's tolerance where its model is half.
v2_tolerance=$(python3 -c 'import json, sys; from export.precision import TOLERANCE
o = json.load(open(sys.argv[1]))["options"]; print(1e-4 if o["full_model_dtype"] == "float32" else TOLERANCE)' "$repo/manifest.json")
if [ "${CHECK:-1}" = 1 ] && [ -z "${FROM:-}" ]; then
  python3 -m serving.cli serve --repository "$repo" --http-port 18000 --grpc-port 18001 --metrics-port 18002 \
    > "$RESULTS/serve-$NAME.log" 2>&1 &
  pid=$!
  for _ in $(seq 180); do curl -sf localhost:18000/v2/health/ready > /dev/null && break; sleep 1; done
  timeout 120 python3 scripts/gpu/check_answers.py --url 127.0.0.1:18000 --device cuda \
    --tolerance 1e-4 --v2-tolerance "$v2_tolerance" --out "$RESULTS/answers-$NAME.json" > "$RESULTS/answers-$NAME.log" 2>&1
  echo "answers: $(grep -o '"ok": [a-z]*' "$RESULTS/answers-$NAME.json" 2>/dev/null || tail -2 "$RESULTS/answers-$NAME.log")"
  kill -TERM $pid; timeout 60 tail --pid=$pid -f /dev/null
fi
nvidia-smi dmon -s u -d 1 > "$RESULTS/gpu-util-$NAME.txt" 2>&1 &
dmon=$!
top -b -d 5 -w 250 > "$RESULTS/top-$NAME.txt" 2>&1 &
topp=$!
python3 scripts/gpu/thread_cpu.py --name tritonserver --interval 4 --out "$RESULTS/thread-cpu-$NAME.json" &
threadp=$!
timeout 400 python3 -m serving.cli bench --repository "$repo" --device cuda --load-client wrk \
  --workflows "${WORKFLOWS:-v2,v1}" --batch-size "${BATCH_SIZES:-1,32}" --concurrency "${CONCURRENCY:-1,64,256}" \
  --level-seconds "${SECONDS_PER_LEVEL:-5}" --targets gpu --no-plots --out "$RESULTS/bench-$NAME" \
  --server-log "$RESULTS/tritonserver-$NAME.log" ${BENCH_OPTIONS:-} > "$RESULTS/bench-$NAME.log" 2>&1
echo "bench exit $?"
kill $dmon $topp $threadp 2>/dev/null
grep "^| " "$RESULTS/bench-$NAME.log" | head -30
