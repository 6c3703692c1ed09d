"""CLI commands of the compression layer: `loopgolf size`, `loopgolf fit`, `loopgolf export`.

    loopgolf size runs/x/model.lgz [--code packed|core|train_gpt.py]
    loopgolf fit runs/x/checkpoint.pt --out model.lgz [--target 15990000] [--code packed|core|FILE]
    loopgolf export --preset universal --set data.train=... --out train_gpt.py [--packed]

`size` reports compressed bytes per stream (tensor group x dtype), raw bytes per tensor group, the
code bytes and the total against 16,000,000. The code bytes are, by default, the ones the run
counted: the packed single-file export of the artifact's (checkpoint's) embedded config; `--code
core` counts the core sources, `--code FILE` a shipped script. `fit` re-quantizes a training
checkpoint's float weights to land just under a target (compress/fit.py). `export` writes the
single-file submission (lab/export.py). `register(sub)` adds them to the CLI's subparsers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from loopgolf.config import BUDGET_BYTES, ConfigError, RunConfig


def _code_bytes(code: str | None, config: dict | None = None, where: str = "") -> int:
    """Bytes of the counted code: "packed" (default; the export of `config`), "core", or a file."""
    from loopgolf.compress.budget import code_bytes, file_bytes
    from loopgolf.lab.export import packed_code_bytes

    if code in (None, "packed"):
        if not isinstance(config, dict):
            raise ConfigError(f"{where}: no embedded config to export; pass --code core or "
                              "--code FILE (the shipped script)")
        return packed_code_bytes(RunConfig.from_dict(config))
    return code_bytes() if code == "core" else file_bytes(code)


def size_report(artifact: Path, code: str | None = None) -> str:
    """The `loopgolf size` text: per-stream and per-group table, then the budget line."""
    from loopgolf.compress.artifact import inspect_artifact, read_artifact
    from loopgolf.compress.budget import budget_report, format_budget

    _, meta = read_artifact(artifact)  # validates the whole file (payload included) first
    report = inspect_artifact(artifact.read_bytes(), str(artifact))
    budget = budget_report(report.total_bytes, _code_bytes(code, meta.get("config"), str(artifact)),
                           BUDGET_BYTES)
    return report.format_table() + "\n" + format_budget(budget)


def cmd_size(args) -> int:
    print(size_report(Path(args.artifact), args.code))
    return 0


def _config_from(args) -> RunConfig:
    from loopgolf.presets import get_preset

    if args.config:
        try:
            cfg = RunConfig.from_json(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{args.config}: cannot read config ({e})") from None
    else:
        cfg = get_preset(args.preset)
    return cfg.override(args.set or []).validate()


def cmd_fit(args) -> int:
    from loopgolf.compress.artifact import inspect_artifact, write_bytes_atomic
    from loopgolf.compress.fit import fit_to_budget
    from loopgolf.train.checkpoint import load_checkpoint

    ck = load_checkpoint(Path(args.checkpoint))
    cfg = RunConfig.from_json(ck["config_json"]).override(args.set or []).validate()
    code = _code_bytes(args.code, cfg.to_dict(), args.checkpoint)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}
    res = fit_to_budget(state, cfg.quant, args.target, code, meta={"config": cfg.to_dict()})
    # again with the chosen knobs recorded in the artifact's config (a few header bytes differ)
    cfg.quant = res.qcfg
    res = fit_to_budget(state, res.qcfg, args.target, code, meta={"config": cfg.to_dict()})
    write_bytes_atomic(Path(args.out), res.blob)
    print(inspect_artifact(res.blob, args.out).format_table())
    q = res.qcfg
    print(f"fit: scheme {q.scheme} clip {q.clip} k {q.sdclip_k:.4f} prune_frac {q.prune_frac:.6f}; "
          f"artifact {len(res.blob):,} B + code {code:,} B = {res.total_bytes:,} B "
          f"(target {args.target:,}, {len(res.trials)} trials)")
    return 0


def cmd_export(args) -> int:
    from loopgolf.compress.budget import file_bytes
    from loopgolf.lab.export import export_single_file

    cfg = _config_from(args)
    out = export_single_file(cfg, Path(args.out), packed=args.packed, codec=args.codec)
    print(f"exported {out}: {file_bytes(out):,} code bytes"
          f"{f' (packed, {args.codec})' if args.packed else ''}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `size`, `fit` and `export` to the CLI's subparsers."""
    p = sub.add_parser("size", help="artifact bytes per stream/group + code bytes vs 16,000,000")
    p.add_argument("artifact")
    p.add_argument("--code", default="packed",
                   help="counted code: packed (default: the packed export of the artifact's config, "
                        "as the run counted), core (the core sources) or a shipped script's path")
    p.set_defaults(fn=cmd_size)

    p = sub.add_parser("fit", help="re-quantize a checkpoint to land just under a byte target")
    p.add_argument("checkpoint", help="a run's checkpoint.pt (float weights + config)")
    p.add_argument("--out", required=True, help="artifact to write")
    p.add_argument("--target", type=int, default=15_990_000, help="artifact + code bytes")
    p.add_argument("--code", default="packed",
                   help="counted code: packed (default, the packed export of the checkpoint's config), "
                        "core (the core sources) or a shipped script's path")
    p.add_argument("--set", action="append", metavar="quant.FIELD=VALUE", help="override a field")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("export", help="write the single-file train_gpt.py for a resolved config")
    p.add_argument("--preset", default="baseline")
    p.add_argument("--config", help="a config.json instead of a preset")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--out", default="train_gpt.py")
    p.add_argument("--packed", action="store_true", help="compressed self-extracting form")
    p.add_argument("--codec", default="lzma", choices=("lzma", "brotli"))
    p.set_defaults(fn=cmd_export)
