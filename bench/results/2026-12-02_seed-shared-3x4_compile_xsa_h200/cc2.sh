#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl || exit 4
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
T0=$(date +%s)
for m in eager pad fp32; do
  timeout 60 python3 bench/scripts/compile_check.py --gpt --only=0 --xsa=$m 2>&1 | grep -v Warning | tee -a $OUT/xsa.txt
  echo "$m gpt done at $(( $(date +%s)-T0 )) s"
done
for m in eager pad; do
  [ $(( $(date +%s)-T0 )) -gt 250 ] && break
  timeout 90 python3 -c "
import sys; sys.argv=['x','--xsa=$m']; sys.path.insert(0,'bench/scripts')
import compile_check as c; c.patch_xsa('$m'); c.check_steps(['model.plan_stages=3x2@0.5','model.plan=3x2'])" 2>&1 | grep -v Warning | tee -a $OUT/xsa.txt
  echo "$m steps done at $(( $(date +%s)-T0 )) s"
done
