"""Command line: `loopgolf <command>` or `python -m loopgolf <command>` (also under torchrun).

Every command maps to one function in COMMANDS. Known failures (bad config, corrupt shard, artifact
or tokenizer, diverged training) print one `loopgolf: error: ...` line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loopgolf.config import ConfigError, RunConfig

DEMO_CACHE = Path.home() / ".cache" / "loopgolf" / "demo"


def _config(args) -> RunConfig:
    from loopgolf.presets import get_preset

    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            cfg = RunConfig.from_json(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
    else:
        cfg = get_preset(args.preset)
    cfg.override(args.set or [])
    if getattr(args, "name", None):
        cfg.name = args.name
    return cfg.validate()


def _print_summary(res: dict) -> None:
    keys = ("name", "steps", "ms_per_step", "tokens_per_s", "peak_mem_gib", "val_bpb_prequant",
            "val_bpb", "quant_gap_bpb", "artifact_bytes", "code_bytes", "total_bytes", "fits_budget")
    print("result " + " ".join(f"{k}:{res[k]}" for k in keys if k in res), flush=True)


def cmd_train(args) -> int:
    from loopgolf import dist
    from loopgolf.lab.runs import new_run_dir, run_with_reload

    cfg = _config(args)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg.out_dir, cfg.name, args.resume)
    res = run_with_reload(cfg, run_dir, resume=args.resume, code=args.code)
    if dist.info().is_main:
        _print_summary(res)
        print(f"run directory: {run_dir}")
    dist.cleanup()
    return 0


def cmd_demo(args) -> int:
    from loopgolf.data.prepare import prepare_demo
    from loopgolf.lab.runs import new_run_dir, run_with_reload
    from loopgolf.presets import demo

    data = prepare_demo(Path(args.cache_dir))
    print(f"demo corpus: {data['source']} ({data['n_train_docs']} train / {data['n_val_docs']} val documents)")
    cfg = demo()
    cfg.data.train, cfg.data.val, cfg.data.tokenizer = data["train"], data["val"], data["tokenizer"]
    cfg.train.device = "cpu" if not args.gpu else "auto"
    cfg.override([f"train.budget_s={args.budget_s}"] + (args.set or []))
    run_dir = new_run_dir(args.out_dir, cfg.name, resume=False)
    res = run_with_reload(cfg.validate(), run_dir)
    _print_summary(res)
    print(f"artifact {res['artifact']}: {res['artifact_bytes']:,} bytes "
          f"(+ {res['code_bytes']:,} code bytes = {res['total_bytes']:,} of 16,000,000)")
    print(f"reloaded artifact val_bpb: {res['val_bpb']:.4f} (pre-quantization {res['val_bpb_prequant']:.4f}); "
          f"run directory: {run_dir}")
    return 0


def cmd_eval(args) -> int:
    from loopgolf import dist
    from loopgolf.pipeline import evaluate_artifact, write_json

    res = evaluate_artifact(Path(args.artifact), args.val, args.tokenizer, args.device,
                            max_tokens=args.max_tokens)
    if dist.info().is_main:
        if args.json:
            write_json(Path(args.json), res)
        print("eval " + " ".join(f"{k}:{v}" for k, v in res.items()), flush=True)
    dist.cleanup()
    return 0


def cmd_params(args) -> int:
    from loopgolf.model.gpt import GPT

    cfg = _config(args)
    model = GPT(cfg.model)
    print(f"preset {cfg.name}: {model.num_params():,} parameters; {model.plan.describe()}")
    return 0


def cmd_config(args) -> int:
    print(_config(args).to_json())
    return 0


def cmd_presets(args) -> int:
    from loopgolf.presets import PRESETS

    for name, fn in PRESETS.items():
        print(f"{name:12s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_bench_prepare(args) -> int:
    from loopgolf.lab.bench import prepare_bench_shards

    prepare_bench_shards(Path(args.bench_dir), Path(args.tokenizer), Path(args.out), args.files, args.workers)
    return 0


def cmd_bench_run(args) -> int:
    from loopgolf.lab.bench import run_side_by_side

    per_preset: dict[str, list[str]] = {}
    for item in args.preset_set or []:
        preset, sep, setting = item.partition(":")
        if not sep or preset not in args.presets:
            raise ConfigError(f"--preset-set {item!r}: write PRESET:SECTION.FIELD=VALUE for one of {args.presets}")
        per_preset.setdefault(preset, []).append(setting)
    results = run_side_by_side(args.presets, Path(args.shards), Path(args.tokenizer), args.budget_s,
                               Path(args.out), args.set or [], per_preset=per_preset)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="baseline", help="named preset (see `loopgolf presets`)")
    p.add_argument("--config", help="a config.json (e.g. from a run directory) instead of a preset")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a field")
    p.add_argument("--name", help="run name (default: the preset's)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="loopgolf", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train, compress and score a looped model on the built-in corpus (CPU)")
    p.add_argument("--budget-s", type=float, default=100.0, help="training wall clock (default 100)")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--cache-dir", default=str(DEMO_CACHE))
    p.add_argument("--gpu", action="store_true", help="use CUDA when available")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("train", help="train -> artifact -> reload -> exact val_bpb")
    _add_config_args(p)
    p.add_argument("--run-dir", help="explicit run directory (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--code", choices=("packed", "core"), default="packed",
                   help="code bytes counted (budget, quant.fit_target): the packed single-file export "
                        "of this config (default) or the core source files")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="score an artifact (rebuilt from the file alone)")
    p.add_argument("artifact")
    p.add_argument("--val", required=True, help="glob of validation shards")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model for the byte tables")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(fn=cmd_eval)

    for name, fn, hlp in (("params", cmd_params, "parameter count and plan of a preset"),
                          ("config", cmd_config, "print the resolved config as JSON")):
        p = sub.add_parser(name, help=hlp)
        _add_config_args(p)
        p.set_defaults(fn=fn)
    sub.add_parser("presets", help="list presets").set_defaults(fn=cmd_presets)

    from loopgolf.lab import data_commands

    data_commands.register(sub)
    from loopgolf.lab import compress_commands, depth, eval_suite, seeds, submission

    for module in (depth, compress_commands, eval_suite, seeds, submission):
        module.register(sub)
    bench = sub.add_parser("bench", help="the proxy benchmark").add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("prepare", help="tokenize bench .jsonl.zst files into shards")
    p.add_argument("--bench-dir", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--files", nargs="+", default=["train-00", "train-01", "val"])
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(fn=cmd_bench_prepare)
    p = bench.add_parser("run", help="presets side by side, one process per GPU")
    p.add_argument("--shards", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--presets", nargs="+", required=True)
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--preset-set", action="append", metavar="PRESET:SECTION.FIELD=VALUE",
                   help="override a field for one preset only")
    p.set_defaults(fn=cmd_bench_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from loopgolf.lab.errors import USER_ERRORS

    try:
        return args.fn(args)
    except USER_ERRORS as e:
        print(f"loopgolf: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("loopgolf: interrupted", file=sys.stderr)
        return 130
