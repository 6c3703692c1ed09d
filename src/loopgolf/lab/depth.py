"""Depth at evaluation: score one trained artifact with several loop counts and plot bpb vs loops.

A looped model is trained at one depth; running its shared blocks more (or fewer) times at evaluation
is free in bytes. `depth_curve` loads the model from the artifact once and reports the exact val_bpb
of each loop count k: the trained plan's `with_loops(k)`, run on the same weights through `GPT.at`.
"""
from __future__ import annotations

import json
from pathlib import Path


from loopgolf import dist
from loopgolf.pipeline import load_val, model_from_artifact, resolve_device
from loopgolf.run_phases import score


def depth_curve(artifact: Path, val: str, tokenizer: str, loops: list[int], device_kind: str = "auto",
                max_tokens: int = 0) -> list[dict]:
    device = resolve_device(device_kind)
    dist.init(device.type)
    model, cfg = model_from_artifact(artifact, device)
    valset = load_val(val, tokenizer, cfg.model.vocab_size)
    out = []
    for k in loops:
        plan = model.plan.with_loops(k)
        res = score(model.at(plan), valset, cfg, device, max_tokens=max_tokens)  # the artifact's recipe
        res.update(loops=k, plan=plan.spec, virtual_layers=plan.n_virtual, trained=plan.schedule == model.plan.schedule)
        out.append(res)
        if dist.info().is_main:
            print(f"depth loops:{k} plan:{plan.spec} virtual_layers:{plan.n_virtual} "
                  f"val_bpb:{res['val_bpb']:.4f}", flush=True)
    return out


def plot_depth(results: list[dict], png: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["loops"] for r in results]
    ys = [r["val_bpb"] for r in results]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.plot(xs, ys, marker="o")
    for r in results:
        if r.get("trained"):
            ax.scatter([r["loops"]], [r["val_bpb"]], s=120, facecolors="none", edgecolors="red",
                       label="trained depth")
    ax.set_xlabel("loops at evaluation")
    ax.set_ylabel("val_bpb (artifact round trip)")
    ax.set_title(title or "bpb vs eval-time loops")
    ax.grid(alpha=0.3)
    if any(r.get("trained") for r in results):
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def cmd_depth(args) -> int:
    res = depth_curve(Path(args.artifact), args.val, args.tokenizer, args.loops, args.device, args.max_tokens)
    if dist.info().is_main:
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        if args.png:
            plot_depth(res, Path(args.png), title=Path(args.artifact).parent.name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("depth", help="val_bpb of an artifact at several eval-time loop counts (+ PNG)")
    p.add_argument("artifact")
    p.add_argument("--val", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--loops", type=int, nargs="+", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-tokens", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--png")
    p.set_defaults(fn=cmd_depth)
