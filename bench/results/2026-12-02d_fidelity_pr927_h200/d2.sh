#!/bin/bash
# Device call 2 of 2026-12-02 (fourth session), as one background job (bench/scripts/device_bg.sh):
#  a. PR #927: the preset side only, reusing call 1's script log (its preset had failed on the
#     SWA + QAT name bug, fixed in train/averaging.py);
#  b. PR #29: two preset seeds with the random-window loader, reusing last session's two script logs.
set -u
source bench/scripts/device_stage.sh || exit $?
R=bench/results
common=(--train "$ST/shards/*_train_*.bin" --val "$ST/shards/*_val_*.bin" --tokenizer $TOK --steps 200
        --set train.compile_cache_dir=/root/cc)
mkdir -p /root/d2
python3 -m loopgolf fidelity --script .ref/pr927_train_gpt.py --pr 927 --val-tokens 3145728 "${common[@]}" \
  --script-seeds 1337 --script-log 1337=$R/2026-12-02d_fidelity_pr927_h200/script_seed1337.log \
  --png /root/d2/fid927/curves.png --out /root/d2/fid927 2>&1 | tee /root/d2/fid927.log
python3 -m loopgolf fidelity --script .ref/pr29_train_gpt.py --preset seed-universal-mqa --dialect pr29 \
  --batch-tokens 262144 "${common[@]}" --script-seeds 1337 42 \
  --script-log 1337=$R/2026-12-02c_fidelity_pr29_h200/script_seed1337.log \
  --script-log 42=$R/2026-12-02c_fidelity_pr29_h200/script_seed42.log --preset-seeds 1337 42 \
  --png /root/d2/fid29/curves.png --out /root/d2/fid29 2>&1 | tee /root/d2/fid29.log
