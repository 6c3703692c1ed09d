"""`loopgolf submission`: a records-style folder from a seeds report (users.md section 3).

Writes README.md (per-seed table: steps, pre-/post-quantization bpb, artifact bytes, then mean ±
std and the significance verdict), submission.json (author, github_id, name, blurb, date, track,
val_bpb, val_loss, val_bpb_std, bytes_total, bytes_code, seeds, seed_results, hardware, versions,
compliance) and train_seed{S}.log copies. When loopgolf.lab.export exists, its export_single_file
writes the packed single-file train_gpt.py for the first seed's config.json; otherwise the README
says why it is missing.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shutil
from pathlib import Path

from loopgolf.config import BUDGET_BYTES, RunConfig
from loopgolf.data.atomic import atomic_write_text
from loopgolf.lab.seeds import format_markdown

TRAIN_BUDGET_S = 600.0
EVAL_BUDGET_S = 600.0


def _env(row: dict) -> dict:
    p = Path(row["run_dir"]) / "env.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def compliance(report: dict, eval_report: dict | None) -> dict:
    rows = [r for r in report["seeds"] if "val_loss" in r]
    c = {"artifact_under_16mb": bool(rows) and all(r.get("total_bytes", BUDGET_BYTES + 1) <= BUDGET_BYTES for r in rows),
         "training_under_600s": bool(rows) and all(r.get("train_seconds", 1e9) <= TRAIN_BUDGET_S for r in rows),
         "three_seeds": len(rows) >= 3, "no_pre_quant_ttt": True}
    if eval_report is not None:
        phases, checks = eval_report["phases"], eval_report["legality"]["checks"]
        c["eval_under_600s"] = all(v["within_eval_budget"] for k, v in phases.items() if k != "load")
        c["score_first_ttt"] = all(v.get("score_first", True) for k, v in checks.items() if k.startswith("ttt"))
        c["normalized_distributions"] = all(v["ok"] for k, v in checks.items() if k.endswith("normalized"))
        c["every_token_scored_once"] = all(v["ok"] for k, v in checks.items() if k.endswith("events"))
        c["no_ngram_cache"] = "mixture" not in phases
        c["legality_checker_passed"] = eval_report["legality"]["ok"]
    return c


def build_submission(report: dict, out_dir: Path, author: str, github_id: str = "", name: str = "",
                     blurb: str = "", track: str = "track_10min_16mb",
                     eval_report: dict | None = None) -> dict:
    rows = [r for r in report["seeds"] if "val_loss" in r]
    if not rows:
        raise ValueError("the seeds report has no successful seed; nothing to submit")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _env(rows[0])
    summ = report["summary"]
    sub = {
        "author": author, "github_id": github_id, "name": name or report["preset"], "blurb": blurb,
        "date": datetime.date.today().isoformat(), "track": track,
        "val_bpb": round(summ["val_bpb_mean"], 8), "val_loss": round(summ["val_loss_mean"], 8),
        "val_bpb_std": round(summ["val_bpb_std"], 8),
        "bytes_total": max(r.get("total_bytes", 0) for r in rows),
        "bytes_code": max(r.get("code_bytes", 0) for r in rows),
        "seeds": [r["seed"] for r in rows],
        "seed_results": {str(r["seed"]): {"val_loss": r["val_loss"], "val_bpb": r["val_bpb"],
                                          "artifact_bytes": r.get("artifact_bytes"), "steps": r.get("steps"),
                                          "step_avg_ms": r.get("ms_per_step"), "eval_time_s": r.get("eval_time_s")}
                         for r in rows},
        "hardware": ", ".join(env.get("gpus", [])) or env.get("platform", "unknown"),
        "pytorch_version": env.get("torch"),
        "versions": {k: env.get(k) for k in ("loopgolf", "python", "torch", "numpy", "cuda", "sentencepiece",
                                              "code_sha256")},
        "compliance": compliance(report, eval_report),
    }
    if "significance" in report:
        sub["t_statistic"], sub["p_value"] = report["significance"]["t"], report["significance"]["p"]
        sub["significance_rule"] = report["significance"]["text"]
    for r in rows:
        log = Path(r["run_dir"]) / "train.log"
        if log.is_file():
            shutil.copyfile(log, out_dir / f"train_seed{r['seed']}.log")
    script_note = _export_script(out_dir / "train_gpt.py", Path(rows[0]["run_dir"]))
    atomic_write_text(out_dir / "submission.json", json.dumps(sub, indent=2) + "\n")
    readme = [f"# {sub['name']}", "", blurb, "", format_markdown(report),
              f"Total submission size: {sub['bytes_total']:,} bytes (code {sub['bytes_code']:,}).", "",
              "## Compliance", ""] + [f"- {k}: {v}" for k, v in sub["compliance"].items()] + ["", script_note, ""]
    if eval_report is not None:
        readme[-1:-1] = ["## Evaluation phases", ""] + [
            f"- {k}: val_bpb {v['val_bpb']:.5f}, {v['seconds']:.1f} s" for k, v in eval_report["phases"].items()
            if "val_bpb" in v] + [""]
    atomic_write_text(out_dir / "README.md", "\n".join(readme))
    return sub


def _export_script(path: Path, run_dir: Path) -> str:
    """The packed single-file script for the run's config, via lab/export.py when it exists."""
    if importlib.util.find_spec("loopgolf.lab.export") is None:
        return "The single-file script is not included: loopgolf.lab.export is not available."
    from loopgolf.lab import export

    fn = getattr(export, "export_single_file", None)
    config = run_dir / "config.json"
    if fn is None or not config.is_file():
        return (f"The single-file script is not included: "
                f"{'export_single_file is missing' if fn is None else f'{config} is missing'}.")
    fn(RunConfig.from_json(config.read_text()), path, packed=True)
    return f"`{path.name}` is the exported single-file script (packed; its bytes are the code bytes)."


def cmd_submission(args: argparse.Namespace) -> int:
    report = json.loads(Path(args.seeds_report).read_text())
    ev = json.loads(Path(args.eval_json).read_text()) if args.eval_json else None
    sub = build_submission(report, Path(args.out), args.author, args.github_id, args.name, args.blurb,
                           args.track, ev)
    print(f"submission folder {args.out}: val_bpb {sub['val_bpb']} ({len(sub['seeds'])} seeds), "
          f"compliance {sub['compliance']}")
    return 0


def register(sub) -> None:
    """Add `loopgolf submission` to the CLI's subparsers."""
    p = sub.add_parser("submission", help="README, submission.json and logs from a seeds report")
    p.add_argument("--seeds-report", required=True, help="seeds_report.json from `loopgolf seeds`")
    p.add_argument("--out", required=True, help="folder, e.g. records/track_10min_16mb/YYYY-MM-DD_name")
    p.add_argument("--author", required=True)
    p.add_argument("--github-id", default="")
    p.add_argument("--name", default="")
    p.add_argument("--blurb", default="")
    p.add_argument("--track", default="track_10min_16mb")
    p.add_argument("--eval-json", help="report of `loopgolf evaluate --json` for the compliance block")
    p.set_defaults(fn=cmd_submission)
