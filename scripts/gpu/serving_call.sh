#!/usr/bin/env bash
# One GPU call's whole serving experiment, from the project's root on the GPU machine, with
# scripts/gpu/pack.sh's folder carried:
#
#   scripts/gpu/serving_call.sh OUT COMMIT [BUDGET_SECONDS]   (default 560)
#
# After set-up (scripts/gpu/setup.sh), the steps STEPS names, in order (default "default
# tokenizer profile"):
#   default    the default export served, its answers checked and benched (serve_bench.sh)
#   fp16       v2 with full_model in float16 (--full-model-dtype float16), the same way
#   fp32       v2 with full_model in float32 (--full-model-dtype float32), the same way
#   answerhost the default export but with full_model's answer in host memory
#              (--full-model-answer host), the same way
#   rtN        the default export but with N threads per full_model instance sending its answers
#              (--full-model-response-threads N), the same way
#   rtNhost    (N one digit) both: N response threads and the answer in host memory
#   qdN        the default export with every dynamic batcher waiting up to N µs to fill a batch
#              (--queue-delay-us N): fewer executions, so less host CPU per request
#   graphsN    the default export with full_model's executions of at most N texts replayed as CUDA
#              graphs (--full-model-cuda-graphs N; 0: none), v2 only (v1 does not run full_model)
#   sgraphsN   the same export, v2 single texts only at concurrency 1 and 192 (answers checked)
#   waitW      the default export with tritonserver's threads waiting for the GPU by W (spin, yield or
#              block: --gpu-wait W): a thread that blocks leaves its core to the host's other stages
#   shapes     first and second calls of full_model per single-text shape (half_shapes.py)
#   blsmbN     v1 with BLS batches of up to N texts (the GPU default: 512), batches of 32 at
#              concurrency 64 and 256
#   blsN       (N one digit) v1 with N BLS instances, batches of 32 at concurrency 64 and 256
#   fmN        v2 with N full_model instances per GPU, batches of 32 at concurrency 64 and 256
#   sfmN       v2 with N full_model instances per GPU, single texts at concurrency 1 and 192
#   http32     the default export's v2 single texts with 32 HTTP threads (Triton's default: 8)
#   http8      the default export's v2, single texts and batches of 32, with Triton's 8 HTTP threads
#   again      the default export's v2 benched as http8 is, with its own HTTP threads (after http8:
#              the same comparison in the other order)
#   trace      the default export's v2, single texts at one level (TRACE_CONCURRENCY, default 192),
#              one request in 50 traced by Triton: where each one's time goes (bench/trace.py);
#              TRACE_EXPORT: export flags for it (e.g. "--full-model-cuda-graphs 64")
#   s:FLAGS    v2 single texts at concurrency 1 and 192 (answers checked), exported with FLAGS,
#              export options joined by commas (s:--full-model-cuda-graphs=64,--gpu-wait=block);
#              a NAME=VALUE among them is set in the environment of the export, server and bench
#              (s:CUDA_MODULE_LOADING=EAGER,--full-model-cuda-graphs=64)
#   v2:FLAGS   the same export, v2 at the call's BATCH_SIZES and CONCURRENCY
#   tokenizer  the tokenizer stage's rate outside Triton, in 1 and 12 processes
#   profile    full_model in process: precision variants (PROFILE_VARIANTS, default all), threads,
#              kernels, with what is left (PROFILE_BATCHES, PROFILE_THREADS, PROFILE_SECONDS: the
#              script's --batches, --threads, --seconds)
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
# An export with FLAGS (options joined by commas; NAME=VALUE among them goes into the environment of
# the export, server and bench), served and benched as the caller's WORKFLOWS, BATCH_SIZES and
# CONCURRENCY say; its files are named PREFIX and the flags.
flagged_step() {
  local flags=$1 prefix=$2 envs=() options=() flag
  for flag in ${flags//,/ }; do
    case $flag in [!-]*=*) envs+=("$flag") ;; *) options+=("$flag") ;; esac
  done
  env ${envs[@]+"${envs[@]}"} timeout $(($(left) - 30)) \
    scripts/gpu/serve_bench.sh "$prefix$(printf %s "$flags" | tr -cs 'a-zA-Z0-9' '-')" "$R" \
    ${options[@]+"${options[@]}"}
}
export SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-4}
for step in ${STEPS:-default tokenizer profile}; do
  echo "--- $step at $(($(date +%s) - start)) s"
  case $step in
    default) timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh default "$R" ;;
    fp16)
      WORKFLOWS=v2 timeout $(($(left) - 30)) \
        scripts/gpu/serve_bench.sh fp16 "$R" --full-model-dtype float16 ;;
    fp32) WORKFLOWS=v2 timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh fp32 "$R" --full-model-dtype float32 ;;
    answerhost) timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh answerhost "$R" --full-model-answer host ;;
    qd[0-9]*) timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh "$step" "$R" --queue-delay-us "${step#qd}" ;;
    rt[0-9]host)
      timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh "$step" "$R" \
        --full-model-response-threads "${step:2:1}" --full-model-answer host ;;
    rt[0-9]*) timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh "$step" "$R" --full-model-response-threads "${step#rt}" ;;
    graphs[0-9]*)
      WORKFLOWS=v2 timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh "$step" "$R" --full-model-cuda-graphs "${step#graphs}" ;;
    sgraphs[0-9]*)
      WORKFLOWS=v2 BATCH_SIZES=1 CONCURRENCY=1,192 timeout $(($(left) - 30)) \
        scripts/gpu/serve_bench.sh "$step" "$R" --full-model-cuda-graphs "${step#sgraphs}" ;;
    wait*) timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh "$step" "$R" --gpu-wait "${step#wait}" ;;
    shapes) timeout 120 python3 scripts/gpu/half_shapes.py --out "$R/half_shapes.json" ;;
    blsmb[0-9]*)
      WORKFLOWS=v1 BATCH_SIZES=32 CONCURRENCY=64,256 CHECK=0 timeout $(($(left) - 30)) \
        scripts/gpu/serve_bench.sh "$step" "$R" --bls-max-batch "${step#blsmb}" ;;
    bls[0-9])
      WORKFLOWS=v1 BATCH_SIZES=32 CONCURRENCY=64,256 CHECK=0 timeout $(($(left) - 30)) \
        scripts/gpu/serve_bench.sh "$step" "$R" --bls-instances "${step#bls}" ;;
    sfm[0-9]*)
      WORKFLOWS=v2 BATCH_SIZES=1 CONCURRENCY=1,192 CHECK=0 timeout $(($(left) - 30)) \
        scripts/gpu/serve_bench.sh "$step" "$R" --full-model-instances "${step#sfm}" ;;
    fm[0-9]*)
      WORKFLOWS=v2 BATCH_SIZES=32 CONCURRENCY=64,256 CHECK=0 timeout $(($(left) - 30)) \
        scripts/gpu/serve_bench.sh "$step" "$R" --full-model-instances "${step#fm}" ;;
    http32)
      FROM=default WORKFLOWS=v2 BATCH_SIZES=1 CONCURRENCY=64,256,512 BENCH_OPTIONS="--http-threads 32" \
        timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh http32 "$R" ;;
    http8|again)
      threads=""
      [ "$step" = http8 ] && threads="--http-threads 8"
      FROM=default WORKFLOWS=v2 BATCH_SIZES=1,32 CONCURRENCY=64,256 BENCH_OPTIONS="$threads" \
        timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh "$step" "$R" ;;
    trace)
      WORKFLOWS=v2 BATCH_SIZES=1 CONCURRENCY=${TRACE_CONCURRENCY:-192} CHECK=0 BENCH_OPTIONS="--trace-rate 50" \
        timeout $(($(left) - 30)) scripts/gpu/serve_bench.sh trace "$R" ${TRACE_EXPORT:-}
      cat "$R/bench-trace/trace.md" ;;
    s:*) WORKFLOWS=v2 BATCH_SIZES=1 CONCURRENCY=1,192 flagged_step "${step#s:}" s ;;
    v2:*) WORKFLOWS=v2 flagged_step "${step#v2:}" v2 ;;
    tokenizer) timeout 40 python3 scripts/tokenizer_rate.py --processes 1,12 --seconds 4 --out "$R/tokenizer_rate.json" ;;
    profile)
      timeout $(($(left) - 15)) python3 scripts/gpu/full_model_profile.py --out "$R/full_model_profile.json" \
        ${PROFILE_VARIANTS:+--variants $PROFILE_VARIANTS} ${PROFILE_BATCHES:+--batches $PROFILE_BATCHES} \
        ${PROFILE_THREADS:+--threads $PROFILE_THREADS} ${PROFILE_SECONDS:+--seconds $PROFILE_SECONDS} \
        > "$R/profile.log" 2>&1
      grep -h '^{' "$R/profile.log" | cut -c1-300 ;;
    *) echo "unknown step $step" ;;
  esac
  # A step whose timed command ran out of the call's budget says so (its files so far still come back).
  [ $? = 124 ] && echo "--- $step stopped at $(($(date +%s) - start)) s: the call's budget ran out"
done
echo "done at $(($(date +%s) - start)) s"
