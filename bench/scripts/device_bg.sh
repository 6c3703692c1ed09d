#!/bin/bash
# Jobs longer than one device call (10 min): start them in their own process session, which the box
# keeps running after the call returns (while the machine stays warm: call again within 30 s), and
# wait on them across calls.
#   bash bench/scripts/device_bg.sh start NAME CMD...   run CMD in the background; log /root/bg/NAME.log
#   bash bench/scripts/device_bg.sh wait NAME SECONDS [DIR]
#       wait until NAME ends or SECONDS pass; print its log's tail; pack the log, its exit code and DIR
#       (the job's output folder, without weights) into $OUT/NAME.tgz. Exit 0 when it ended with 0,
#       10 while it still runs, else its exit code.
set -u
BG=/root/bg; mkdir -p $BG
cmd=$1; name=$2; shift 2
case $cmd in
  start)
    rm -f $BG/$name.rc
    setsid bash -c '"$@"; echo $? > '"$BG/$name.rc" bash "$@" > $BG/$name.log 2>&1 < /dev/null &
    echo "started $name (pid $!): $*";;
  wait)
    limit=$1; dir=${2:-}; t0=$(date +%s)
    # a machine that went cold between calls is a fresh one: no log, nothing to wait for
    [ -f $BG/$name.log ] || { echo "device_bg: no job $name on this machine (it went cold: start it again)"; exit 3; }
    while [ ! -f $BG/$name.rc ] && [ $(( $(date +%s) - t0 )) -lt "$limit" ]; do sleep 5; done
    tail -n 25 $BG/$name.log
    if [ -n "${OUT:-}" ]; then
      files=(-C $BG "$name.log"); [ -f $BG/$name.rc ] && files+=("$name.rc")
      [ -n "$dir" ] && [ -d "$dir" ] && files+=(-C "$dir" .)
      tar czf "$OUT/$name.tgz" --exclude='*.lgz' --exclude='*.pt' --exclude='*.bin' --exclude='*.ptz' --exclude=checkpoints "${files[@]}"
    fi
    if [ -f $BG/$name.rc ]; then rc=$(cat $BG/$name.rc); echo "$name ended rc=$rc"; exit "$rc"; fi
    echo "$name still running after ${limit}s"; exit 10;;
  *) echo "usage: device_bg.sh start|wait NAME ..."; exit 2;;
esac
