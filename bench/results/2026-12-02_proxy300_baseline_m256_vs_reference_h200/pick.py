"""Pick the fastest 25 s variant whose round-trip bpb is within 0.015 of the plain run at its micro-batch."""
import json, sys
from pathlib import Path
SETS = {"m128": [], "m256": ["train.micro_batch_seqs=256"],
        "m128fp8": ["model.fp8=true"], "m256fp8": ["train.micro_batch_seqs=256", "model.fp8=true"],
        "m128ce": ["model.fused_ce=true"]}
BASE = {"m128": "m128", "m256": "m256", "m128fp8": "m128", "m256fp8": "m256", "m128ce": "m128"}
res = {}
for name in SETS:
    f = Path(sys.argv[1]) / name / "result.json"
    if f.is_file():
        d = json.loads(f.read_text())
        res[name] = (d["ms_per_step"], d["val_bpb"])
print(" ".join(f"{k}={v}" for k, v in res.items()), file=sys.stderr)
ok = {k: v for k, v in res.items() if BASE[k] in res and v[1] <= res[BASE[k]][1] + 0.015}
best = min(ok, key=lambda k: ok[k][0]) if ok else "m128"
sets = list(SETS[best])
# fused CE was measured at micro 128 only: add it to the winner if it clearly beat plain m128
if "m128ce" in ok and "m128" in res and ok["m128ce"][0] < res["m128"][0] * 0.99 and "model.fused_ce=true" not in sets:
    sets.append("model.fused_ce=true")
print(" ".join(f"--set {s}" for s in sets))
