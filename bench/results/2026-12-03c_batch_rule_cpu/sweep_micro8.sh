#!/bin/bash
# batch-size sweep at fixed wall clock on the demo corpus (CPU); one line per run in results.txt
cd /work/main; . .venv/bin/activate
for budget in 30 90; do
  for bt in 2048 4096 8192 16384 32768; do
    n=b${budget}_t${bt}; t=$(date +%s)
    python -m loopgolf demo --budget-s $budget --out-dir /tmp/bsweep/$n --cache-dir /tmp/bsweep/cache \
      --set train.batch_tokens=$bt --set train.micro_batch_seqs=8 > /tmp/bsweep/$n.log 2>&1
    echo "$n rc=$? wall=$(( $(date +%s)-t )) $(python3 - /tmp/bsweep/$n <<'PY'
import json, sys, glob
fs = glob.glob(sys.argv[1] + "/**/result.json", recursive=True)
d = json.load(open(fs[0])) if fs else {}
print("steps", d.get("steps"), "tok/s", d.get("tokens_per_s"), "prequant", d.get("val_bpb_prequant"), "bpb", d.get("val_bpb"))
PY
)" >> /tmp/bsweep/results.txt
  done
done
echo done >> /tmp/bsweep/results.txt
