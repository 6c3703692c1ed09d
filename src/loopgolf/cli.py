"""Command line: `loopgolf <command>` or `python -m loopgolf <command>` (also under torchrun).

Every command maps to one function (set_defaults(fn=...)). All failures go through one path in
main(): an expected one (bad config, corrupt shard, artifact or tokenizer, diverged training, a full
disk; lab/errors.py decides) prints one `loopgolf: error: ...` line and exits with status 2; anything
else prints one line and "rerun with --debug for the traceback" (exit 1). `--debug`, anywhere on
the command line, shows the traceback instead.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
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


def _require_data(cfg: RunConfig) -> None:
    """Training needs shards and a tokenizer; check them before a run directory is created."""
    d = cfg.data
    missing = [f"data.{k}" for k in ("train", "val", "tokenizer") if not getattr(d, k).strip()]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not set: pass --set data.train='DIR/*_train_*.bin' "
            "--set data.val='DIR/*_val_*.bin' --set data.tokenizer=MODEL.model (shards from "
            "`loopgolf data tokenize` or `loopgolf data fineweb`), or run `loopgolf demo`")
    if not Path(d.tokenizer).is_file():
        raise ConfigError(f"data.tokenizer={d.tokenizer}: no such file; pass a SentencePiece .model")
    for key in ("train", "val"):
        pattern = getattr(d, key)
        if not glob.glob(str(Path(pattern).expanduser())):
            raise ConfigError(f"data.{key}={pattern}: no shard file matches; check the path "
                              "(quote globs so the shell passes them through)")


def _print_summary(res: dict) -> None:
    keys = ("name", "steps", "ms_per_step", "tokens_per_s", "peak_mem_gib", "val_bpb_prequant",
            "val_bpb", "quant_gap_bpb", "artifact_bytes", "code_bytes", "total_bytes", "fits_budget")
    print("result " + " ".join(f"{k}:{res[k]}" for k in keys if k in res), flush=True)


def cmd_train(args) -> int:
    from loopgolf import dist
    from loopgolf.lab.runs import new_run_dir, run_with_reload

    cfg = _config(args)
    _require_data(cfg)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg.out_dir, cfg.name, args.resume)
    existed = run_dir.exists()
    try:
        res = run_with_reload(cfg, run_dir, resume=args.resume, code=args.code)
    except BaseException:
        if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a start that failed before writing anything leaves no empty run folder
        raise
    if dist.info().is_main:
        _print_summary(res)
        print(f"run directory: {run_dir}")
    dist.cleanup()
    return 0


def cmd_demo(args) -> int:
    from loopgolf.data.demo_cache import prepare_demo
    from loopgolf.lab.runs import new_run_dir, run_with_reload
    from loopgolf.presets import demo

    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise ConfigError(f"--budget-s {args.budget_s}: the demo needs a finite budget > 0 seconds "
                          "(default 100)")
    data = prepare_demo(Path(args.cache_dir), progress=True)
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
    from loopgolf.compress.artifact import read_artifact
    from loopgolf.pipeline import evaluate_artifact, write_json

    artifact = Path(args.artifact)
    if args.max_tokens is not None:
        if args.max_tokens < 0:
            raise ConfigError(f"--max-tokens {args.max_tokens} must be >= 0 (0 = the whole validation set)")
        seq_len = RunConfig.from_dict(read_artifact(artifact)[1].get("config") or {}).data.seq_len
        if 0 < args.max_tokens < seq_len:
            raise ConfigError(f"--max-tokens {args.max_tokens} is less than one window of this model "
                              f"(data.seq_len={seq_len}); pass 0 (the whole set) or >= {seq_len}")
    # a checksum-valid file whose tensors contradict its embedded config is refused by model_from_artifact
    res = evaluate_artifact(artifact, args.val, args.tokenizer, args.device, max_tokens=args.max_tokens)
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
    import torch

    from loopgolf.model.gpt import GPT
    from loopgolf.model.params import kinds_of
    from loopgolf.presets import PRESETS, summary

    width = max(map(len, PRESETS))
    for name, fn in PRESETS.items():
        with torch.device("meta"):  # shapes only: no memory, no init time
            params = dict(GPT(fn().model).named_parameters())
        total = sum(p.numel() for p in params.values())
        kinds = kinds_of(params.items())  # the parameter table says what is training-only
        ship = sum(p.numel() for n, p in params.items() if not kinds[n].training_only)
        count = f"{total:,} parameters" + (f" ({ship:,} ship)" if ship != total else "")
        print(f"{name:<{width}}  {count:<38} {summary(name)}")
    return 0


def cmd_bench_prepare(args) -> int:
    from loopgolf.lab.bench import prepare_bench_shards

    prepare_bench_shards(Path(args.bench_dir), Path(args.tokenizer), Path(args.out), args.files, args.workers)
    return 0


def cmd_bench_run(args) -> int:
    from loopgolf.lab.bench import run_side_by_side

    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise ConfigError(f"--budget-s {args.budget_s}: each preset needs a finite budget > 0 seconds")
    per_preset: dict[str, list[str]] = {}
    for item in args.preset_set or []:
        preset, sep, setting = item.partition(":")
        if not sep or preset not in args.presets:
            raise ConfigError(f"--preset-set {item!r}: write PRESET:SECTION.FIELD=VALUE for one of {args.presets}")
        per_preset.setdefault(preset, []).append(setting)
    sets = list(args.set or [])
    if args.cap:
        from loopgolf.lab.ablate import FIT_MARGIN_BYTES

        if not FIT_MARGIN_BYTES < args.cap <= 16_000_000:
            raise ConfigError(f"--cap {args.cap}: give a byte cap in {FIT_MARGIN_BYTES + 1:,}..16,000,000")
        sets.append(f"quant.fit_target={args.cap - FIT_MARGIN_BYTES}")  # every preset fitted under the cap
    results = run_side_by_side(args.presets, Path(args.shards), Path(args.tokenizer), args.budget_s,
                               Path(args.out), sets, per_preset=per_preset)
    ok = all(r["exit_code"] == 0 for r in results)
    if args.reference:
        from loopgolf.lab.reference import run_reference, speed_ratios

        ref = run_reference(Path(args.reference), Path(args.shards), args.tokenizer, args.budget_s, Path(args.out))
        for preset, ratio in speed_ratios(results, ref).items():
            print(f"bench ratio preset:{preset} tokens_per_s_vs_reference:{ratio:.3f} "
                  f"reference_val_bpb:{ref.get('val_bpb')}", flush=True)
        ok = ok and ref["exit_code"] == 0
    return 0 if ok else 1


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="baseline", help="named preset (see `loopgolf presets`)")
    p.add_argument("--config", help="a config.json (e.g. from a run directory) instead of a preset")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a field")
    p.add_argument("--name", help="run name (default: the preset's)")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error format (usage errors also exit 2)."""

    def error(self, message: str):
        self.exit(2, f"loopgolf: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="loopgolf", description=__doc__.splitlines()[0])
    ap.add_argument("--debug", action="store_true", help="show the traceback of a failure")
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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-tokens", type=int, default=None,
                   help="score only the first N tokens (0 = all; at least the model's seq_len)")
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
    from loopgolf.lab import ablate, compress_commands, depth, eval_suite, fidelity_command, profile, seeds, submission

    for module in (depth, compress_commands, eval_suite, seeds, submission, fidelity_command, ablate, profile):
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
    p.add_argument("--cap", type=int, default=0,
                   help="byte cap: every preset's artifact + code is fitted just under it")
    p.add_argument("--reference", default="",
                   help="the challenge's train_gpt.py (your copy): run it too and print tokens/s ratios")
    p.set_defaults(fn=cmd_bench_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("loopgolf: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        if debug:
            raise
        from loopgolf.lab.errors import one_line

        message, expected = one_line(e)
        if not expected:
            message += " (rerun with --debug for the traceback)"
        print(f"loopgolf: error: {message}", file=sys.stderr, flush=True)
        return 2 if expected else 1
    finally:
        if "loopgolf.dist" in sys.modules:  # only if a command used it: `presets` needs no torch
            sys.modules["loopgolf.dist"].cleanup(barrier=False)  # no barrier: a peer may have failed
