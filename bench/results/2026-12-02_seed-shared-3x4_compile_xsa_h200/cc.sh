#!/bin/bash
# seed-shared-3x4 under torch.compile: per-parameter gradients compiled vs eager, then 12 optimizer steps each
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl || exit 4
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
T0=$(date +%s)
timeout 250 python3 bench/scripts/compile_check.py --steps 2>&1 | grep -v Warning | tee $OUT/steps.txt
echo "steps done at $(( $(date +%s)-T0 )) s"
timeout $(( 560 - ($(date +%s)-T0) )) python3 bench/scripts/compile_check.py --gpt --only=0,1,2,3,4,7 2>&1 | grep -v Warning | tee $OUT/gpt.txt
echo "done at $(( $(date +%s)-T0 )) s"
