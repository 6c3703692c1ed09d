#!/bin/bash
# On the GPU box: a preset's compile warm-up, cold and then a second run on the same machine with the
# same persistent compile cache (issue 15: a second run of seed-loop45 warms up in <= 30 s). Each run
# trains briefly on the staged shards and scores a small plain slice; only its warm-up matters here.
#   bash bench/scripts/device_warm2.sh [PRESET] [TRAIN_S]     (after device_stage.sh has staged train-00)
# A cold seed-loop45 warm-up took 379.6 s with QAT in the graph (2026-12-04), so run it as a background job:
#   bash bench/scripts/device_bg.sh start warm2 bash bench/scripts/device_warm2.sh seed-loop45 15
#   bash bench/scripts/device_bg.sh wait warm2 560 /root/warm2      (again until it ends)
# Prints each run's warm-up seconds, compile counters and seconds per graph (stage/row length/qat); copies the logs and result.json to $OUT/warm2.
set -u
preset=${1:-seed-loop45}; train_s=${2:-15}
source bench/scripts/device_stage.sh || exit $?
R=/root/warm2/$preset; rm -rf $R /root/cc_warm2; mkdir -p $R
D="--set data.train=$ST/shards/bench00_train_*.bin --set data.val=$ST/shards/bench_val_*.bin --set data.tokenizer=$TOK"
for run in cold warm; do
  t=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${WARM2_TIMEOUT_S:-900}" python3 -m loopgolf train --preset $preset $D --set train.budget_s=$train_s \
    --set train.compile_cache_dir=/root/cc_warm2 --set eval.method=plain --set eval.max_tokens=131072 \
    --set quant.gptq=false --set quant.fit_target=0 --run-dir $R/$run > $R/$run.log 2>&1
  echo "$run rc=$? wall $(( $(date +%s)-t )) s"
  python3 - "$R/$run" <<'PY'
import json, sys
from pathlib import Path
p = Path(sys.argv[1]) / "result.json"
d = json.loads(p.read_text()) if p.exists() else {}
c = d.get("compile", {})
print("  warm-up s:", d.get("phases", {}).get("compile_warmup_s"), "| warmup counters:", json.dumps(c.get("warmup")),
      "| loop:", json.dumps(c.get("loop")), "| steps", d.get("steps"), "ms/step", d.get("ms_per_step"))
print("  by shape:", json.dumps(c.get("warmup_s_by_shape")))
PY
  grep -m3 -i "warmup\|warm-up" $R/$run.log | cut -c1-600
done
mkdir -p "${OUT:-/tmp}/warm2"; cp $R/*.log "${OUT:-/tmp}/warm2/"
for run in cold warm; do [ -f $R/$run/result.json ] && cp $R/$run/result.json "${OUT:-/tmp}/warm2/$run.result.json"; done
