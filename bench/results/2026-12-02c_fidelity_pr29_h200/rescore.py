"""Re-score this folder's PR #29 fidelity run with the running-mean comparison (lab/fidelity.py
window_means): the script logs 10-step means, so loopgolf's per-step losses are averaged over the
same steps. Also scores the float32-stream preset run (fp32_stream/) against the same script runs.
Run from the repository root: python bench/results/2026-12-02c_fidelity_pr29_h200/rescore.py"""
import json
from pathlib import Path

from loopgolf.lab.fidelity import fidelity_report, format_report, parse_run_dir, plot_report
from loopgolf.lab.script_dialects import parse_pr29_log

HERE = Path(__file__).parent
old = json.loads((HERE / "fidelity.json").read_text())
scripts = [parse_pr29_log((HERE / f"script_seed{s}.log").read_text()) for s in (1337, 42)]
for run, was in zip(scripts, old["script"]):
    run.exit_code, run.command = was["exit_code"], was["command"]
for name, run_dir in (("windowed", HERE / "preset_run"), ("fp32_stream", HERE / "fp32_stream")):
    preset = parse_run_dir(run_dir)
    preset.command = old["preset"]["command"] + (" --set train.compile_check=false --set model.fp32_stream=true"
                                                 if name == "fp32_stream" else "")
    report = fidelity_report(scripts, preset, old["window"], old["sdpa_standin"])
    report["script_profile"], report["val_tokens"] = old["script_profile"], old["val_tokens"]
    report = json.loads(json.dumps(report))
    (HERE / f"fidelity_{name}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot_report(report, HERE / f"curves_{name}.png")
    print(f"== {name}\n{format_report(report)}")
    print("windows:", [(w["steps"], round(w["mean_abs_diff"], 4)) for w in report["preset_vs_script"]["windows"]],
          "spread:", [(w["steps"], round(w["mean_abs_diff"], 4)) for w in report["script_seed_spread"]["windows"]])
