#!/usr/bin/env bash
# The frontier table and plot of docs/results.md, from the bench JSON kept under docs/runs:
#   scripts/gpu/distill_frontier_docs.sh docs/img/distill_frontier.png
set -euo pipefail
B1=docs/runs/distill_gpu/bench B2=docs/runs/distill_gpu_full/bench
B3=docs/runs/distill_gpu_run4/bench/frontier B4=docs/runs/distill_gpu_run5/bench/frontier
B5=docs/runs/distill_gpu_run5/bench/all
args=()
for r in 1 2; do
  args+=(--bench s1:bundled=$B1/round$r-bundled.json)
  for n in l2_e4 l2_e4_emb l2_e8 l3_e8; do args+=(--bench s1:run1/$n=$B1/round$r-$n.json); done
  args+=(--bench s2:bundled=$B2/round$r-small.json --bench s2:run2/l2_e8=$B2/round$r-bundled.json)
  args+=(--bench s3:bundled=$B3/round$r-small.json --bench s3:run2/l2_e8=$B3/round$r-run2.json
         --bench s3:run4/l2_e8_6ep=$B3/round$r-run4.json --bench s3:run4/l2_e8_4ep=$B3/round$r-run4_4ep.json)
  args+=(--bench s4:bundled=$B4/round$r-small.json --bench s4:run4/l2_e8_6ep=$B4/round$r-run4.json
         --bench s4:run5/l2_e8_6ep=$B4/round$r-run5.json --bench s4:run5/l2_e8_4ep=$B4/round$r-run5_4ep.json)
  # Session 5: every candidate whose weights still exist, in one session.
  args+=(--bench s5:bundled=$B5/round$r-small.json)
  for n in run1/l2_e4 run1/l2_e8 run2/l2_e8 run4/l2_e8_6ep run5/l2_e8_4ep run5/l2_e8_6ep; do
    args+=(--bench "s5:$n=$B5/round$r-${n/\//_}.json")
  done
done
.venv/bin/python scripts/gpu/distill_frontier.py --summary run1=docs/runs/distill_gpu/summary.json \
    --summary run2=docs/runs/distill_gpu_full/summary.json --summary run4=docs/runs/distill_gpu_run4/students/summary.json \
    --summary run5=docs/runs/distill_gpu_run5/students/summary.json "${args[@]}" \
    --reference run2/teacher --reference run4/teacher --reference run4/teacher_s1 \
    --reference run5/teacher --reference run5/teacher_s1 --default run5/l2_e8_6ep \
    --bundled-test 0.9074 --bundled-bytes 23997976 --plot "$@"
