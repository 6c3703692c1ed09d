#!/bin/bash
# P5 (2026-12-03, third session, the last ~190 s of device time, fresh machine): `baseline` with
# FlashAttention-2 through SDPA (train.sdpa_backend=flash; the reference script runs that backend) and
# as it is (cuDNN), by `loopgolf profile` (random tokens, 10 timed steps, one profiled step), each with
# its own cold compile cache. Flash first: it is the unknown one.
T0=$(date +%s); R=/root/p5; mkdir -p $R /root/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
P() { local n=$1; shift
  local t=$(date +%s); echo "$n $*" >> $R/variants.txt
  timeout ${P_LIMIT_S:-95} python3 -m loopgolf profile --preset baseline --steps 10 --profile-steps 1 \
      --set train.compile_cache_dir=/root/cc/$n "$@" --out $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s"; grep -m3 -E 'ms/step|warm-up|MFU' $R/$n/profile.md 2>/dev/null | cut -c1-220
  sed -n '/| category/,/^$/p' $R/$n/profile.md | head -12; tail -2 $R/$n.log | cut -c1-200
  rm -rf $R/$n/random_data 2>/dev/null; tar czf $OUT/p5.tgz -C $R --exclude='*.bin' --exclude='*.pt' --exclude='*.gz' --exclude='*trace*' . ; }
P flash --set train.sdpa_backend=flash
P cur
echo "p5 done at $(( $(date +%s)-T0 )) s"
