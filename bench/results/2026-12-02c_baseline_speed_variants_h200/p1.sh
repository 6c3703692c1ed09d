#!/bin/bash
# P1 (2026-12-02 c): stage val + train-00 in the background (CPU) while `loopgolf profile` times
# baseline variants on random tokens (20 timed steps each, one profiled step); one table line each.
T0=$(date +%s); R=/root/p1; mkdir -p $R
( source bench/scripts/device_stage.sh > $R/stage.log 2>&1; echo "staged at $(( $(date +%s)-T0 )) s" >> $R/stage.log ) &
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
P() { local n=$1; shift
  if [ $(( $(date +%s)-T0 )) -gt 470 ]; then echo "$n skipped (time)"; return; fi
  local t=$(date +%s); echo "$n $*" >> $R/variants.txt
  timeout 170 python3 -m loopgolf profile --preset baseline --steps 20 --profile-steps 1 \
      --set train.compile_cache_dir=/root/cc/$n "$@" --out $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s | $(grep -m1 'ms/step' $R/$n/profile.md 2>/dev/null) | $(grep -m1 'warm-up' $R/$n/profile.md | cut -c1-150)"
  tar czf $OUT/p1.tgz -C $R . ; }
P cur
P fused --set model.fused_qkv=true
P fusedro --set model.fused_qkv=true --set train.compile_mode=reduce-overhead
P fusedtune --set model.fused_qkv=true --set train.compile_tuning=true
wait; cat $R/stage.log; tar czf $OUT/p1.tgz -C $R .
echo "done at $(( $(date +%s)-T0 )) s"
