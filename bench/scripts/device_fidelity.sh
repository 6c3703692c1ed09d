#!/bin/bash
# On the GPU box: `loopgolf fidelity` for one seed PR as a background job that outlives the call
# (bench/scripts/device_bg.sh), on the shards bench/scripts/device_stage.sh staged.
#   first call:  bash bench/scripts/device_fidelity.sh start PR "SEEDS" [EXTRA fidelity args...]
#   next calls:  bash bench/scripts/device_fidelity.sh wait PR [SECONDS]    (default 560)
# The script copy is .ref/prPR_train_gpt.py (carried; bench/scripts/device_prepare.sh writes it);
# PR 29 uses --dialect pr29 at 262,144 tokens per step (its 524,288 does not fit one H200 eager).
# Results: /root/fidPR, packed into $OUT/fidPR.tgz by every wait.
set -u
action=$1; pr=$2; shift 2
name=fid$pr; dir=/root/$name
source bench/scripts/device_stage.sh || exit $?
case $action in
  start)
    seeds=${1:-"1337 42"}; shift || true
    if [ "$pr" = 29 ]; then
      how=(--preset seed-universal-mqa --dialect pr29 --batch-tokens 262144)
    else
      how=(--pr "$pr" --val-tokens "${VAL_TOKENS:-3145728}")  # bench val holds 3,350,327 tokens
    fi
    mkdir -p $dir
    # shellcheck disable=SC2086
    bash bench/scripts/device_bg.sh start $name python3 -m loopgolf fidelity --script .ref/pr${pr}_train_gpt.py "${how[@]}" \
      --train "$ST/shards/*_train_*.bin" --val "$ST/shards/*_val_*.bin" --tokenizer $TOK --steps 200 \
      --script-seeds $seeds --set train.compile_cache_dir=/root/cc --png $dir/curves.png --out $dir "$@"
    bash bench/scripts/device_bg.sh wait $name "${FID_WAIT_S:-540}" $dir;;
  wait)
    bash bench/scripts/device_bg.sh wait $name "${1:-560}" $dir;;
  *) echo "usage: device_fidelity.sh start|wait PR ..."; exit 2;;
esac
