#!/bin/bash
# P3 (2026-12-03, the session's last ~7 device minutes on a fresh machine): `loopgolf profile` times
# baseline with and without model.fold_scales on random tokens (20 timed steps, one profiled step),
# in the order cur / fold / cur2 so drift shows; a variant that would start after P_STOP_S is skipped.
T0=$(date +%s); R=/root/p3; mkdir -p $R /root/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
P() { local n=$1; shift
  if [ $(( $(date +%s)-T0 )) -gt ${P_STOP_S:-200} ]; then echo "$n skipped (time)"; return; fi
  local t=$(date +%s); echo "$n $*" >> $R/variants.txt
  timeout 150 python3 -m loopgolf profile --preset baseline --steps 20 --profile-steps 1 \
      --set train.compile_cache_dir=/root/cc/$n "$@" --out $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s | $(grep -m1 'ms/step' $R/$n/profile.md 2>/dev/null) | $(grep -m1 'warm-up' $R/$n/profile.md | cut -c1-150)"
  tail -3 $R/$n.log | cut -c1-200
  rm -f $R/$n/*.json.gz $R/$n/trace* 2>/dev/null; tar czf $OUT/p3.tgz -C $R . ; }
P cur
P fold --set model.fold_scales=true
P cur2
echo "done at $(( $(date +%s)-T0 )) s"
