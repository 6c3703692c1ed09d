#!/bin/bash
# P4 (2026-12-03, second session, call 1 on a fresh machine): stage the bench shards in the background
# (CPU), time `baseline` with and without model.fold_scales by `loopgolf profile` (random tokens, 20
# timed steps, one profiled step; order cur / fold / cur2 so drift shows; one shared compile cache, so
# cur2 also shows a warm cache), then start PR #1453's fidelity without XSA on both sides (the test of
# the XSA-miscompile hypothesis, bench/results/2026-12-03_fidelity_pr1453_h200) as a background job.
T0=$(date +%s); R=/root/p4; mkdir -p $R /root/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl && touch /root/site/.done
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
bash bench/scripts/device_bg.sh start stage bash bench/scripts/device_stage.sh
P() { local n=$1; shift
  if [ $(( $(date +%s)-T0 )) -gt ${P_STOP_S:-330} ]; then echo "$n skipped (time)"; return; fi
  local t=$(date +%s); echo "$n $*" >> $R/variants.txt
  timeout 170 python3 -m loopgolf profile --preset baseline --steps 20 --profile-steps 1 \
      --set train.compile_cache_dir=/root/cc/prof "$@" --out $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s"; grep -m3 -E 'ms/step|warm-up|MFU' $R/$n/profile.md 2>/dev/null | cut -c1-220
  sed -n '/| category/,/^$/p' $R/$n/profile.md | head -12; tail -2 $R/$n.log | cut -c1-200
  rm -rf $R/$n/random_data $R/$n/run 2>/dev/null; tar czf $OUT/p4.tgz -C $R --exclude='*.bin' --exclude='*.pt' --exclude='*.gz' --exclude='*trace*' . ; }
P cur
P fold --set model.fold_scales=true
P cur2
bash bench/scripts/device_bg.sh wait stage 200 || { echo "staging failed"; exit 5; }
FID_WAIT_S=${FID_WAIT_S:-5} bash bench/scripts/device_fidelity.sh start 1453 "1337" \
  --script-env XSA_LAST_N=0 --set model.xsa_last=0
echo "p4 done at $(( $(date +%s)-T0 )) s"
