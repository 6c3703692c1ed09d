"""Re-score this session's three fidelity runs (PR #29 with random windows and two preset seeds, PR #21
with its second script seed, PR #927) with the report as it is now: the seed verdict (every
cross-code pair against each code's own seed spread) and the preset's seed spread on the script's
10-step means. Inputs are the runs as they came back (fidelity_asrun.json of each folder, the same
RunLog fields `loopgolf fidelity` parsed on the device); no new device time.
Run from the repository root: python bench/results/2026-12-02d_fidelity_pr29_random_windows_h200/rescore.py"""
import json
from pathlib import Path

from loopgolf.lab.fidelity import RunLog, fidelity_report, format_report, plot_report

ROOT = Path(__file__).parent.parent
for folder in ("2026-12-02d_fidelity_pr29_random_windows_h200", "2026-12-02d_fidelity_pr21_seed42_h200",
               "2026-12-02d_fidelity_pr927_h200"):
    here = ROOT / folder
    old = json.loads((here / "fidelity_asrun.json").read_text())

    def run(d: dict) -> RunLog:
        return RunLog(**{**d, "train_loss": {int(k): v for k, v in d["train_loss"].items()}})
    scripts = [run(d) for d in old["script"]]
    presets = [run(old["preset"]), *(run(d) for d in old.get("preset_more_seeds", []))]
    report = fidelity_report(scripts, presets[0], old["window"], old["sdpa_standin"], presets[1:])
    report["script_profile"], report["val_tokens"] = old["script_profile"], old["val_tokens"]
    report = json.loads(json.dumps(report))
    (here / "fidelity.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot_report(report, here / "curves.png")
    print(f"== {folder}\n{format_report(report)}")
    for key in ("preset_vs_script", "script_seed_spread", "preset_seed_spread"):
        if key in report:
            print(key, [(w["steps"], round(w["mean_abs_diff"], 4)) for w in report[key]["windows"]])
