#!/bin/bash
# S4 (fresh machine): stage train-00 + val, then PR #29 vs seed-universal-mqa at 262,144 tokens/step
# (the published 524,288 OOMs eager on one H200 in S2), 200 steps, script seeds 42 and 1337.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl || exit 4
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
ST=/root/stage; mkdir -p $ST; cp .stage/c/* $ST/; TOK=$ST/fineweb_1024_bpe.model
python3 -m loopgolf bench prepare --bench-dir .stage/a --tokenizer $TOK --out $ST/shards --files train-00 || exit 5
python3 -m loopgolf bench prepare --bench-dir $ST --tokenizer $TOK --out $ST/shards --files val || exit 5
t0=$(date +%s)
timeout 330 python3 -m loopgolf fidelity --script .ref/pr29_train_gpt.py --preset seed-universal-mqa --dialect pr29 \
  --train "$ST/shards/*_train_*.bin" --val "$ST/shards/*_val_*.bin" --tokenizer $TOK --steps 200 --batch-tokens 262144 \
  --script-seeds 42 1337 --png $OUT/pr29_curves.png --out /root/fid29 2>&1 | tee $OUT/fid29.log
echo "fidelity rc=${PIPESTATUS[0]} in $(( $(date +%s)-t0 )) s"
cd /root/fid29 && tar czf $OUT/fid29.tgz --exclude='*.lgz' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoints' --exclude='challenge_data' . ; ls -la /root/fid29
