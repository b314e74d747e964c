#!/bin/bash
# usage: sweep.sh TRAIN_TIMEOUT < runs.txt   (lines: NAME PRESET ARGS...)
# Runs every line concurrently on the one GPU, then evaluates each best checkpoint on test.
python3 -c "import click, tqdm" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .devcarry/whl/*.whl; export PYTHONPATH=/tmp/site; }
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
TT=$1; R=/tmp/runs; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
while read -r name preset args; do
  [ -z "$name" ] && continue
  ( echo "python3 -m moe.cli train --preset $preset --data DATA --out $name $args" > $R/$name.cmd
    timeout $TT python3 -m moe.cli train --preset $preset --data .devcarry/data/ag_news \
      --out $R/$name $args > $R/$name.log 2>&1; echo "rc=$?" >> $R/$name.log
    PYTHONPATH=$PWD timeout 60 python3 .devcarry/gpu_eval.py $R/$name .devcarry/data/ag_news $R/$name.test.json >> $R/$name.log 2>&1
    grep -E "^(data|tokenizer|model|epoch [0-9]+/|best|rc)" $R/$name.log | tail -3 ) &
  sleep 2
done
wait
cd $R && for f in */metrics.json; do cp $f ${f%/metrics.json}.metrics.json; done
tar czf $OUT/results.tgz *.log *.cmd *.json
# Bring back the two best small checkpoints by validation accuracy (split: 16 MiB per file).
python3 - <<'PY' > /tmp/best.txt
import json, glob, os
rows = []
for f in glob.glob("/tmp/runs/s_*/metrics.json"):
    m = json.load(open(f)); rows.append((m.get("best_val_accuracy", 0), os.path.basename(os.path.dirname(f))))
for v, n in sorted(rows, reverse=True)[:2]: print(n)
PY
for n in $(cat /tmp/best.txt); do
  tar cf - -C $R $n | split -b 15M - $OUT/ck_$n.tar.part_
done
ls -la $OUT
