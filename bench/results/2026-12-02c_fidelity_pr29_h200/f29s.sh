#!/bin/bash
# PR #29's preset side again with the float32 residual stream (model.fp32_stream, now the preset's
# default): the fidelity call's exact preset command (fidelity.json "preset.command"), compile check off.
source bench/scripts/device_stage.sh > /root/stage.log 2>&1 || { cat /root/stage.log; exit 3; }
python3 -m loopgolf train --preset seed-universal-mqa --set "data.train=$ST/shards/*_train_*.bin" \
  --set "data.val=$ST/shards/*_val_*.bin" --set data.tokenizer=$TOK --set train.seed=1337 \
  --set train.max_steps=200 --set train.budget_s=0 --set train.batch_tokens=262144 --set data.seq_len=1024 \
  --set train.log_every=1 --set train.compile_cache_dir=/root/cc --set train.compile_check=false \
  --set model.fp32_stream=true --run-dir /root/f29s > /root/f29s.log 2>&1
echo "rc=$?"; cp /root/f29s.log /root/f29s/metrics.jsonl /root/f29s/result.json $OUT/ 2>/dev/null; tail -3 /root/f29s.log
