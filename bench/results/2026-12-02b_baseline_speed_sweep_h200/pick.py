"""Pick the fastest 20 s variant (variants.txt: name + --set args) whose bpb is within 0.03 of `base`."""
import json, sys
from pathlib import Path
R = Path(sys.argv[1]); res, sets = {}, {}
for line in (R / "variants.txt").read_text().splitlines():
    name, *args = line.split(); sets[name] = args
    f = R / name / "result.json"
    if f.is_file():
        d = json.loads(f.read_text()); res[name] = (d["ms_per_step"], d["val_bpb"])
print(" ".join(f"{k}={v}" for k, v in res.items()), file=sys.stderr)
base = res.get("base")
ok = {k: v for k, v in res.items() if base and v[1] <= base[1] + 0.03}
best = min(ok, key=lambda k: ok[k][0]) if ok else "base"
gain = base[0] / ok[best][0] if ok else 1.0
print(f"{gain:.4f} " + " ".join(sets.get(best, [])))
