"""`loopgolf seeds`: run N seeds of a preset and report mean ± std and significance.

Each seed is a separate `python -m loopgolf train --preset P --set train.seed=S --run-dir DIR/seed_S`
process (lab/runs.run_with_reload: train, compress, score the reloaded artifact), so seeds share
nothing in memory. With --gpus, seeds run concurrently, one GPU each (CUDA_VISIBLE_DEVICES). The
report (seeds_report.json + seeds_report.md) holds each seed's result.json numbers, the summary of
lab/stats.py, and, given per-seed reference scores, the one-sided Welch test and the rule applied.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from loopgolf import dist
from loopgolf.data.atomic import atomic_write_text
from loopgolf.lab import stats

ROW_KEYS = ("val_loss", "val_bpb", "val_bpb_prequant", "steps", "ms_per_step", "train_seconds",
            "artifact_bytes", "code_bytes", "total_bytes", "fits_budget", "eval_method")


def seed_command(preset: str, seed: int, run_dir: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "loopgolf", "train", "--preset", preset,
           "--set", f"train.seed={seed}", "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_seeds(preset: str, seeds: list[int], out_dir: Path, sets: list[str] | None = None,
              gpus: list[str] | None = None) -> list[dict]:
    """Run every seed (concurrently over `gpus`, else one after another); returns per-seed rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = list(seeds)
    running: dict[str, tuple[int, subprocess.Popen, object]] = {}
    rows: dict[int, dict] = {}
    slots = gpus or [""]
    while pending or running:
        for slot in slots:
            if slot not in running and pending:
                seed = pending.pop(0)
                run_dir = out_dir / f"seed_{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                env = dist.child_env(slot)
                log = open(run_dir / "stdout.log", "w", encoding="utf-8")
                proc = subprocess.Popen(seed_command(preset, seed, run_dir, sets or []), stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
                running[slot] = (seed, proc, log)
        for slot, (seed, proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                rows[seed] = collect(out_dir / f"seed_{seed}", seed, proc.returncode)
                del running[slot]
        time.sleep(0.2)
    return [rows[s] for s in seeds]


def collect(run_dir: Path, seed: int, exit_code: int = 0) -> dict:
    row = {"seed": seed, "run_dir": str(run_dir), "exit_code": exit_code}
    result = run_dir / "result.json"
    if exit_code == 0 and result.is_file():
        res = json.loads(result.read_text())
        row.update({k: res[k] for k in ROW_KEYS if k in res})
        row["eval_time_s"] = res.get("eval", {}).get("eval_seconds")
    return row


def load_reference(path: Path) -> list[float]:
    """Per-seed val_loss (nats) from a JSON list, a seeds report or a submission.json."""
    try:
        d = json.loads(Path(path).read_text())
        if isinstance(d, dict) and "seed_results" in d:
            return [float(r["val_loss"]) for r in d["seed_results"].values()]
        if isinstance(d, dict) and "seeds" in d:
            return [float(r["val_loss"]) for r in d["seeds"] if "val_loss" in r]
        return [float(v) for v in d]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: cannot read reference scores ({e}); give a JSON list of per-seed "
                         "val_loss values, a seeds_report.json or a submission.json") from None


def build_report(preset: str, rows: list[dict], reference: list[float] | None = None) -> dict:
    ok = [r for r in rows if "val_loss" in r]
    report: dict = {"preset": preset, "seeds": rows, "failed": [r["seed"] for r in rows if "val_loss" not in r]}
    if ok:
        report["summary"] = stats.summarize([r["val_loss"] for r in ok], [r["val_bpb"] for r in ok])
    if reference and len(ok) >= 2:
        report["reference_val_loss"] = reference
        report["significance"] = stats.verdict([r["val_loss"] for r in ok], reference)
    return report


def format_markdown(report: dict) -> str:
    lines = [f"# Seeds of `{report['preset']}`", "",
             "| Seed | Steps | Pre-quant BPB | Post-quant BPB | val_loss (nats) | Artifact bytes | Total bytes |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["seeds"]:
        if "val_loss" not in r:
            lines.append(f"| {r['seed']} | failed (exit {r['exit_code']}, see {r['run_dir']}/stdout.log) ||||||")
            continue
        lines.append(f"| {r['seed']} | {r.get('steps', '')} | {r.get('val_bpb_prequant', float('nan')):.5f} | "
                     f"{r['val_bpb']:.5f} | {r['val_loss']:.5f} | {r.get('artifact_bytes', 0):,} | "
                     f"{r.get('total_bytes', 0):,} |")
    if "summary" in report:
        lines += ["", f"**Mean:** {report['summary']['text']}"]
    if "significance" in report:
        lines += ["", f"**Against the reference:** {report['significance']['text']}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    j = atomic_write_text(out_dir / "seeds_report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    m = atomic_write_text(out_dir / "seeds_report.md", format_markdown(report))
    return j, m


def cmd_seeds(args: argparse.Namespace) -> int:
    seeds = args.seeds or [1337 + i for i in range(args.n)]
    out = Path(args.out)
    rows = run_seeds(args.preset, seeds, out, args.set or [],
                     args.gpus.split(",") if args.gpus else None)
    ref = load_reference(Path(args.reference)) if args.reference else None
    report = build_report(args.preset, rows, ref)
    write_report(report, out)
    print(format_markdown(report), flush=True)
    return 1 if report["failed"] else 0


def register(sub) -> None:
    """Add `loopgolf seeds` to the CLI's subparsers."""
    p = sub.add_parser("seeds", help="run N seeds of a preset; mean ± std and a Welch test")
    p.add_argument("--preset", required=True)
    p.add_argument("--seeds", type=int, nargs="+", help="explicit seeds (default 1337, 1338, ...)")
    p.add_argument("--n", type=int, default=3, help="number of seeds when --seeds is not given")
    p.add_argument("--out", required=True, help="folder for seed_S/ run directories and the report")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--gpus", help="comma-separated GPU ids: one seed per GPU, concurrently")
    p.add_argument("--reference", help="JSON of the reference's per-seed val_loss (nats)")
    p.set_defaults(fn=cmd_seeds)
