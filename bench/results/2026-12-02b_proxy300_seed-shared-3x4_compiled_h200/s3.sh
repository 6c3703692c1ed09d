#!/bin/bash
# S3: seed-shared-3x4 compiled, proxy-300 (train-00 + train-01 staged by S1/S2 on this warm machine)
ST=/root/stage; TOK=$ST/fineweb_1024_bpe.model
ls $ST/shards/bench01_train_000000.bin $ST/shards/*val* >/dev/null || { echo "S2 stage lost (machine went cold)"; exit 3; }
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 575 python3 -m loopgolf bench run --shards $ST/shards --tokenizer $TOK --presets seed-shared-3x4 --budget-s 300 \
  --out /root/runs/ss --set train.compile_cache_dir=/root/cc --set train.log_every=10 2>&1 | tee $OUT/ss.log
echo "bench rc=${PIPESTATUS[0]} in $(( $(date +%s)-t0 )) s"
cd /root/runs/ss && ls -la . run_seed-shared-3x4; cp *.json $OUT/ 2>/dev/null; cp run_seed-shared-3x4/train.log $OUT/ss_train.log; cp run_seed-shared-3x4/result.json $OUT/ss.result.json; cp run_seed-shared-3x4/metrics.jsonl $OUT/ss.metrics.jsonl
