#!/bin/bash
# S1 (2026-12-02 b): stage train-00 + val, reference 45 s, then 20 s `loopgolf train` runs of baseline
# variants (mix-order reduction, single micro-batch, coordinate-descent tuning, flash SDPA); /root/best.txt for S2.
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl || exit 4
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
ST=/root/stage; R=/root/sweep; mkdir -p $ST $R; cp .stage/c/* $ST/; cp .stage/pick.py .stage/s2.sh .stage/s3.sh /root/ 2>/dev/null
TOK=$ST/fineweb_1024_bpe.model
python3 -m loopgolf bench prepare --bench-dir .stage/a --tokenizer $TOK --out $ST/shards --files train-00 || exit 5
python3 -m loopgolf bench prepare --bench-dir $ST --tokenizer $TOK --out $ST/shards --files val || exit 5
echo "staged at $(( $(date +%s)-T0 )) s"; ls -la $ST/shards
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv
t0=$(date +%s)
python3 -c "
import json; from pathlib import Path; from loopgolf.lab.reference import run_reference
r = run_reference(Path('.ref/train_gpt.py'), Path('$ST/shards'), '$TOK', 45.0, Path('/root/refrun'))
print('reference', json.dumps(r))"
echo "reference took $(( $(date +%s)-t0 )) s"; cp /root/refrun/reference.log $R/reference_45s.log; cp /root/refrun/reference.json $R/ ; tail -3 $R/reference_45s.log
D="--set data.train=$ST/shards/*_train_*.bin --set data.val=$ST/shards/*_val_*.bin --set data.tokenizer=$TOK --set train.budget_s=20 --set train.compile_cache_dir=/root/cc"
v() { local n=$1; shift
  if [ $(( $(date +%s)-T0 )) -gt 500 ]; then echo "$n skipped (time)"; return; fi
  local t=$(date +%s)
  echo "$n $*" >> $R/variants.txt
  timeout 140 python3 -m loopgolf train --preset baseline $D "$@" --run-dir $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s | $(grep -m1 compile_warmup $R/$n.log | cut -c1-160) | $(grep -m1 -i 'compile check\|compile_check' $R/$n.log | cut -c1-200)"
  python3 -c "import json;d=json.load(open('$R/$n/result.json'));print('  ',d['ms_per_step'],d['steps'],round(d['val_bpb'],4),d['peak_mem_gib'])" 2>/dev/null
  python3 /root/pick.py $R > /root/best.txt; tar czf $OUT/s1.tgz -C $R --exclude='*.lgz' --exclude='*.pt' --exclude='checkpoints' . ; }
v base
v mix --set train.compile_mix_order_reduction=true
v mix512 --set train.compile_mix_order_reduction=true --set train.micro_batch_seqs=512
v mixtune --set train.compile_mix_order_reduction=true --set train.compile_tuning=true
v mixflash --set train.compile_mix_order_reduction=true --set train.sdpa_backend=flash
echo "best: $(cat /root/best.txt)  at $(( $(date +%s)-T0 )) s"
