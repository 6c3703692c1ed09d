#!/bin/bash
# On the GPU box: proxy-300 (train-00 + train-01, 300 s of training, round trip in a fresh process)
# for the given presets and, side by side on the same shards and machine, the challenge's reference
# train_gpt.py (`loopgolf bench run --reference`, which prints the tokens/s ratios), as a background
# job that outlives the call (bench/scripts/device_bg.sh), on the shards device_stage.sh staged.
#   call 1 (fresh):  carry .stage/a .stage/c .whl .ref   ->  bash bench/scripts/device_proxy300.sh stage
#   call 2 (warm):   carry .stage/b .whl .ref            ->  bash bench/scripts/device_proxy300.sh start "baseline" [--set ...]
#   next calls:      bash bench/scripts/device_proxy300.sh wait [SECONDS]   (default 560)
# About 16 min of device time for `baseline` + the reference (each: compile, 300 s, eval, export).
# Results: /root/p300 (bench run's output), packed into $OUT/p300.tgz by every wait.
set -u
action=$1; shift
dir=/root/p300
source bench/scripts/device_stage.sh || exit $?
case $action in
  stage) ;;
  start)
    presets=${1:-baseline}; shift || true
    ls $ST/shards/bench00_train_*.bin $ST/shards/bench01_train_*.bin >/dev/null 2>&1 \
      || { echo "device_proxy300: train-00 and train-01 must both be staged (carry .stage/a, then .stage/b)"; exit 3; }
    mkdir -p $dir
    # shellcheck disable=SC2086
    bash bench/scripts/device_bg.sh start p300 python3 -m loopgolf bench run --shards $ST/shards --tokenizer $TOK \
      --presets $presets --budget-s 300 --reference .ref/train_gpt.py --out $dir \
      --set train.compile_cache_dir=/root/cc "$@"
    bash bench/scripts/device_bg.sh wait p300 "${P300_WAIT_S:-500}" $dir;;
  wait)
    bash bench/scripts/device_bg.sh wait p300 "${1:-560}" $dir;;
  *) echo "usage: device_proxy300.sh stage|start|wait ..."; exit 2;;
esac
