#!/bin/bash
# On the GPU box: install the carried wheels and tokenize whatever bench files were carried, once per
# warm machine (a file already staged is skipped, so every call of a session can start with this).
#   usage: source bench/scripts/device_stage.sh      (exports PYTHONPATH, ST, TOK; exit 3 if nothing is staged)
# Carry .whl and .stage/c (val + tokenizer) in the first call, with .stage/a (train-00); .stage/b
# (train-01) in a later call on the same warm machine (bench/scripts/device_prepare.sh builds them).
export ST=/root/stage TOK=/root/stage/fineweb_1024_bpe.model PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src:/root/site
mkdir -p $ST/shards
if [ -d .whl ] && [ ! -f /root/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl \
    && touch /root/site/.done || { echo "device_stage: wheel install failed"; return 4 2>/dev/null || exit 4; }
fi
[ -f .stage/c/fineweb_1024_bpe.model ] && cp -u .stage/c/* $ST/
stage_one() {  # $1 bench dir, $2 file name, $3 shard glob it produces
  if ls $ST/shards/$3 >/dev/null 2>&1; then return 0; fi
  [ -f "$1/$2.jsonl.zst" ] || return 0
  python3 -m loopgolf bench prepare --bench-dir "$1" --tokenizer $TOK --out $ST/shards --files "$2"
}
stage_one $ST val 'bench_val_*.bin'
stage_one .stage/a train-00 'bench00_train_*.bin'
stage_one .stage/b train-01 'bench01_train_*.bin'
echo "device_stage: $(ls $ST/shards 2>/dev/null | tr '\n' ' ')"
ls $ST/shards/bench_val_*.bin >/dev/null 2>&1 || { echo "device_stage: no val staged (machine went cold?)"; return 3 2>/dev/null || exit 3; }
