#!/bin/bash
# batch-size sweep at fixed wall clock on the demo corpus (CPU), micro-batch 2 x 256 tokens for every run
cd /work/main; . .venv/bin/activate
for budget in 30 90; do
  for bt in 512 1024 2048 4096; do
    n=m2_b${budget}_t${bt}; t=$(date +%s)
    python -m loopgolf demo --budget-s $budget --out-dir /tmp/bsweep/$n --cache-dir /tmp/bsweep/cache \
      --set train.batch_tokens=$bt --set train.micro_batch_seqs=2 > /tmp/bsweep/$n.log 2>&1
    echo "$n rc=$? wall=$(( $(date +%s)-t )) $(python3 - /tmp/bsweep/$n <<'PY'
import json, sys, glob
fs = glob.glob(sys.argv[1] + "/**/result.json", recursive=True)
d = json.load(open(fs[0])) if fs else {}
print("steps", d.get("steps"), "tok/s", d.get("tokens_per_s"), "prequant", d.get("val_bpb_prequant"), "bpb", d.get("val_bpb"))
PY
)" >> /tmp/bsweep/results2.txt
  done
done
echo done >> /tmp/bsweep/results2.txt
