#!/bin/bash
# On the GPU box: `loopgolf profile` of one preset in several variants, run in the order given (put the
# plain preset first and last so drift shows), one shared compile cache; tables into $OUT/ab.tgz.
#   carry [".whl"]   ->   bash bench/scripts/device_profile_ab.sh PRESET "cur|" "bthd|--set model.attn_bthd=true" "cur2|"
# Each variant: NAME|SETS[|ENV] (SETS may be empty; ENV = "VAR=value ..." for that variant only, e.g.
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True). P_LIMIT_S caps one variant (default 170 s).
set -u
preset=$1; shift
R=/root/ab; mkdir -p $R /root/site
[ -f /root/site/.done ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .whl/*.whl && touch /root/site/.done; }
export PYTHONPATH=$PWD/src:/root/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
for spec in "$@"; do
  n=${spec%%|*}; sets=${spec#*|}; envs=""
  case $sets in *"|"*) envs=${sets#*|}; sets=${sets%%|*};; esac
  t=$(date +%s); echo "$n $sets ${envs:+(env $envs)}" >> $R/variants.txt
  # shellcheck disable=SC2086
  env $envs timeout "${P_LIMIT_S:-170}" python3 -m loopgolf profile --preset $preset --steps 20 --profile-steps 1 \
      --set train.compile_cache_dir=/root/cc/ab $sets --out $R/$n > $R/$n.log 2>&1
  echo "$n rc=$? $(( $(date +%s)-t )) s"; grep -m4 -E 'ms/step|warm-up|pipelined' $R/$n/profile.md 2>/dev/null | cut -c1-220
  sed -n '/| category/,/^$/p' $R/$n/profile.md | head -6; tail -1 $R/$n.log | cut -c1-200
  rm -rf $R/$n/random_data; tar czf $OUT/ab.tgz -C $R --exclude='*.bin' --exclude='*.pt' --exclude='*trace*' .
done
