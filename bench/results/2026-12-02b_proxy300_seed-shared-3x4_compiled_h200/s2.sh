#!/bin/bash
# S2: stage train-01 (needs S1's stage on this warm machine); then baseline proxy-300 with S1's pick if it
# is >= 3 % faster than plain baseline, else PR #29 fidelity (200 steps, script seeds 42 and 1337).
ST=/root/stage; TOK=$ST/fineweb_1024_bpe.model
ls $ST/shards/bench00_train_000000.bin $ST/shards/*val* >/dev/null || { echo "S1 stage lost (machine went cold)"; exit 3; }
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m loopgolf bench prepare --bench-dir .stage/b --tokenizer $TOK --out $ST/shards --files train-01 || exit 5
echo "staged train-01 in $(( $(date +%s)-t0 )) s"; ls $ST/shards
read GAIN SETS < /root/best.txt; echo "gain $GAIN settings: $SETS"
if python3 -c "import sys; sys.exit(0 if float('$GAIN') >= 1.03 else 1)"; then
  echo baseline > /root/s2did
  python3 -m loopgolf bench run --shards $ST/shards --tokenizer $TOK --presets baseline --budget-s 300 --out /root/runs/proxy300 --set train.compile_cache_dir=/root/cc $SETS
  cd /root/runs/proxy300 && cp baseline.json baseline.log $OUT/ && cp run_baseline/metrics.jsonl $OUT/baseline.metrics.jsonl && cp run_baseline/result.json $OUT/baseline.result.json
  echo "$SETS" > $OUT/settings.txt
else
  echo pr29 > /root/s2did; bash .stage/fid29.sh
fi
