#!/bin/bash
# P2 (2026-12-03): stage val + train-00 in the background (CPU) while `loopgolf profile` times
# baseline with and without model.fold_scales on random tokens (20 timed steps each, one profiled
# step; cur / fold / cur2 order so drift shows), then start PR #1453's fidelity run in the background.
T0=$(date +%s); R=/root/p2; mkdir -p $R
# the wheels (zstandard, brotli) first: the first try of this call profiled before the background
# install had finished and every profile failed at import
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl \
  && mkdir -p /root/site && touch /root/site/.done
( source bench/scripts/device_stage.sh > $R/stage.log 2>&1; echo "staged at $(( $(date +%s)-T0 )) s" >> $R/stage.log ) &
STAGE=$!
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
P() { local n=$1; shift
  if [ $(( $(date +%s)-T0 )) -gt ${P_STOP_S:-400} ]; then echo "$n skipped (time)"; return; fi
  local t=$(date +%s); echo "$n $*" >> $R/variants.txt
  timeout 170 python3 -m loopgolf profile --preset baseline --steps 20 --profile-steps 1 \
      --set train.compile_cache_dir=/root/cc/$n "$@" --out $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s | $(grep -m1 'ms/step' $R/$n/profile.md 2>/dev/null) | $(grep -m1 'warm-up' $R/$n/profile.md | cut -c1-150)"
  rm -f $R/$n/*.json.gz $R/$n/trace* 2>/dev/null; tar czf $OUT/p2.tgz -C $R . ; }
P cur
P fold --set model.fold_scales=true
P cur2
wait $STAGE; cat $R/stage.log; tar czf $OUT/p2.tgz -C $R .
echo "profiles done at $(( $(date +%s)-T0 )) s"
FID_WAIT_S=$(( 560 - ($(date +%s)-T0) )) bash bench/scripts/device_fidelity.sh start 1453 "1337"
echo "call done at $(( $(date +%s)-T0 )) s"
