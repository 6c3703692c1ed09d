#!/bin/bash
# PR #29 (its script, two seeds) vs seed-universal-mqa, 200 steps on the staged shards
ST=/root/stage; TOK=$ST/fineweb_1024_bpe.model; export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 560 python3 -m loopgolf fidelity --script .ref/pr29_train_gpt.py --preset seed-universal-mqa --dialect pr29 \
  --train "$ST/shards/*_train_*.bin" --val "$ST/shards/*_val_*.bin" --tokenizer $TOK --steps 200 \
  --script-seeds 42 1337 --set train.compile_cache_dir=/root/cc --png $OUT/pr29_curves.png --out /root/fid29 2>&1 | tee $OUT/fid29.log
echo "fidelity rc=${PIPESTATUS[0]} in $(( $(date +%s)-t0 )) s"
cd /root/fid29 && tar czf $OUT/fid29.tgz --exclude='*.lgz' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoints' . ; ls -la /root/fid29
