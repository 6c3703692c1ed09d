"""`loopgolf ablate loops`: does the loop pay at this budget? A preset flat and looped, at equal bytes
and equal wall clock, over several seeds.

For each byte cap, every arm is fitted just under the cap (quant.fit_target = cap - margin, the
artifact + code bytes) and trained for the same train.budget_s:
  - `flat`: the preset's physical blocks, each run once (model.plan = N blocks, no plan stages);
  - `looped`: the preset as it is (its plan and plan stages);
  - any `--shape NAME:field=value,field=value` arm (e.g. a smaller looped shape for a 4 MB cap).
The report gives each arm's mean ± std val_bpb of the reloaded artifact, the looped-minus-flat
difference with a one-sided Welch test on per-seed val_loss (lab/stats.py), and a PNG.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from loopgolf.data.atomic import atomic_write_text
from loopgolf.lab import stats
from loopgolf.lab.seeds import run_seeds
from loopgolf.model.recurrence import parse_plan
from loopgolf.presets import get_preset

FIT_MARGIN_BYTES = 10_000  # land this far under the cap: codec output varies by a few KB per trial


def flat_plan(spec: str) -> str:
    """The same physical blocks, each run once: "11:3-5x3" -> "11", "2+3x4+1" -> "6", "1x12" -> "1"."""
    return str(parse_plan(spec).n_blocks)


def parse_shape(text: str) -> tuple[str, list[str]]:
    """"small:model.dim=256,model.plan=2x4" -> ("small", ["model.dim=256", "model.plan=2x4"])."""
    name, sep, body = text.partition(":")
    sets = [s.strip() for s in body.split(",") if s.strip()]
    if not sep or not name.strip() or not sets or any("=" not in s for s in sets):
        raise ValueError(f"--shape {text!r}: expected NAME:section.field=value[,section.field=value]")
    return name.strip(), sets


def arms(preset: str, shapes: list[str]) -> dict[str, list[str]]:
    """Arm name -> the --set overrides that make it."""
    plan = get_preset(preset).model.plan
    out = {"flat": [f"model.plan={flat_plan(plan)}", "model.plan_stages="], "looped": []}
    for text in shapes:
        name, sets = parse_shape(text)
        if name in out:
            raise ValueError(f"--shape {name!r}: the names flat and looped are taken")
        out[name] = sets
    return out


def summarize_arm(rows: list[dict]) -> dict:
    ok = [r for r in rows if "val_loss" in r]
    out: dict = {"seeds": rows, "failed": [r["seed"] for r in rows if "val_loss" not in r]}
    if ok:
        out["summary"] = stats.summarize([r["val_loss"] for r in ok], [r["val_bpb"] for r in ok])
        out["val_loss"] = [r["val_loss"] for r in ok]
        out["max_total_bytes"] = max(r.get("total_bytes") or 0 for r in ok)
    return out


def compare_arms(looped: dict, flat: dict) -> dict | None:
    """Looped minus flat, in bpb (negative = the loop pays), and the one-sided Welch test of
    looped < flat on per-seed val_loss."""
    if "summary" not in looped or "summary" not in flat:
        return None
    out = {"delta_bpb": looped["summary"]["val_bpb_mean"] - flat["summary"]["val_bpb_mean"],
           "delta_nats": looped["summary"]["val_loss_mean"] - flat["summary"]["val_loss_mean"]}
    if len(looped["val_loss"]) >= 2 and len(flat["val_loss"]) >= 2:
        out["welch_looped_better"] = stats.welch_less(looped["val_loss"], flat["val_loss"])
    return out


def ablate_loops(preset: str, caps: list[int], seeds: list[int], budget_s: float, out: Path,
                 sets: list[str], shapes: list[str], gpus: list[str] | None = None) -> dict:
    report: dict = {"preset": preset, "budget_s": budget_s, "seeds": seeds, "caps": {}}
    for cap in caps:
        per_cap: dict = {"arms": {}}
        for arm, arm_sets in arms(preset, shapes).items():
            run_sets = [*sets, f"train.budget_s={budget_s}", f"quant.fit_target={cap - FIT_MARGIN_BYTES}",
                        *arm_sets]
            rows = run_seeds(preset, seeds, out / f"cap{cap}" / arm, run_sets, gpus)
            per_cap["arms"][arm] = {"sets": arm_sets, **summarize_arm(rows)}
        per_cap["looped_vs_flat"] = compare_arms(per_cap["arms"]["looped"], per_cap["arms"]["flat"])
        report["caps"][str(cap)] = per_cap
    return report


def format_report(report: dict) -> str:
    lines = [f"loop ablation of {report['preset']} at {report['budget_s']} s, seeds {report['seeds']}"]
    for cap, per_cap in report["caps"].items():
        lines.append(f"cap {int(cap):,} bytes:")
        for arm, a in per_cap["arms"].items():
            s = a.get("summary")
            lines.append(f"  {arm:<10} " + (f"{s['text']}, max total {a['max_total_bytes']:,} B" if s
                                            else f"failed seeds {a['failed']}"))
        cmp = per_cap.get("looped_vs_flat")
        if cmp:
            w = cmp.get("welch_looped_better")
            lines.append(f"  looped - flat: {cmp['delta_bpb']:+.5f} bpb"
                         + (f" (one-sided Welch p={w['p']:.4g})" if w else ""))
    return "\n".join(lines)


def plot_report(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = list(report["caps"])
    names = sorted({a for c in caps for a in report["caps"][c]["arms"]}, key=lambda n: (n != "flat", n))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        means, errs = [], []
        for c in caps:
            s = report["caps"][c]["arms"].get(name, {}).get("summary")
            means.append(s["val_bpb_mean"] if s else float("nan"))
            errs.append(s["val_bpb_std"] if s else 0.0)
        ax.bar([j + i * width for j in range(len(caps))], means, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(caps))],
                  [f"{int(c) / 1e6:g} MB" for c in caps])
    ax.set_ylabel("val_bpb (reloaded artifact)")
    ax.set_title(f"{report['preset']}: flat vs looped at equal bytes and {report['budget_s']:g} s")
    finite = [s["val_bpb_mean"] for c in caps for a in report["caps"][c]["arms"].values()
              if (s := a.get("summary"))]
    if finite:
        ax.set_ylim(min(finite) - 0.05, max(finite) + 0.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def cmd_ablate_loops(args: argparse.Namespace) -> int:
    out = Path(args.out)
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None
    report = ablate_loops(args.preset, args.caps, args.seeds, args.budget_s, out, args.set or [],
                          args.shape or [], gpus)
    atomic_write_text(out / "ablate_loops.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.png:
        plot_report(report, Path(args.png))
    print(format_report(report), flush=True)
    failed = [s for c in report["caps"].values() for a in c["arms"].values() for s in a["failed"]]
    return 2 if failed else 0


def register(sub) -> None:
    ablate = sub.add_parser("ablate", help="ablations").add_subparsers(dest="ablate_command", required=True)
    p = ablate.add_parser("loops", help="a preset flat vs looped at equal bytes and wall clock")
    p.add_argument("--preset", required=True)
    p.add_argument("--caps", type=int, nargs="+", default=[16_000_000],
                   help="byte caps (artifact + code); each arm is fitted just under each")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 42])
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="for every arm")
    p.add_argument("--shape", action="append", metavar="NAME:SECTION.FIELD=VALUE,...",
                   help="an extra arm, e.g. small:model.dim=256,model.plan=2x4")
    p.add_argument("--gpus", default="", help="comma list: seeds run concurrently, one GPU each")
    p.add_argument("--png", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_ablate_loops)
