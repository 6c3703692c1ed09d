"""`loopgolf size`, `fit` and `export` through register(sub) on a parser of their own."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from loopgolf.compress.artifact import read_artifact, write_artifact
from loopgolf.config import QuantConfig
from loopgolf.lab.compress_commands import register
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.checkpoint import save_checkpoint


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="loopgolf")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.fn(args)


def test_size_reports_streams_groups_and_budget(tmp_path: Path, capsys) -> None:
    state = {"tok_emb.weight": torch.randn(64, 32), "blocks.0.mlp.fc.weight": torch.randn(64, 32)}
    art = tmp_path / "model.lgz"
    rep = write_artifact(art, state, {}, QuantConfig(passthrough_max_numel=16, codec="best"))
    code = tmp_path / "train_gpt.py"
    code.write_bytes(b"#" * 5000)
    assert run(["size", str(art), "--code", str(code)]) == 0
    out = capsys.readouterr().out
    assert "embed.int8" in out and "mlp.float16" in out and "blocks.0" in out
    total = rep.total_bytes + 5000
    assert f"code 5,000 B = {total:,} B of 16,000,000 (fits, {16_000_000 - total:,} B to spare)" in out
    art.write_bytes(art.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        run(["size", str(art)])


def test_export_writes_the_script(tmp_path: Path, capsys) -> None:
    out = tmp_path / "train_gpt.py"
    assert run(["export", "--preset", "tiny", "--set", "train.max_steps=3", "--out", str(out),
                "--packed"]) == 0
    text = out.read_text()
    assert text.startswith("import lzma,base64\nexec(") and text.count("\n") == 2
    assert f"{out.stat().st_size:,} code bytes (packed, lzma)" in capsys.readouterr().out


def test_fit_from_checkpoint(tmp_path: Path, capsys) -> None:
    cfg = get_preset("tiny")
    cfg.quant.passthrough_max_numel = 256
    cfg.quant.row_scale_min = 0.0
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ck = tmp_path / "checkpoint.pt"
    save_checkpoint(ck, {"model": model.state_dict(), "optimizers": [], "step": 1,
                         "train_seconds": 1.0, "position": 0, "config_json": cfg.to_json()})
    out = tmp_path / "fit.lgz"
    int5, int6 = ["--set", "quant.scheme=int5_row"], ["--set", "quant.scheme=int6_row"]
    assert run(["fit", str(ck), "--out", str(out), "--target", "10000000", *int6]) == 0
    full = out.stat().st_size
    # a target inside int5's pruning range: int6 cannot prune down to it (pruning moves these random
    # weights' size by < 1 %), so the fit must lower the width and then prune to land just under it
    assert run(["fit", str(ck), "--out", str(out), "--target", "10000000", *int5]) == 0
    code = tmp_path / "code.py"
    code.write_bytes(b"#" * 1000)
    target = out.stat().st_size - 150 + 1000
    assert run(["fit", str(ck), "--out", str(out), "--target", str(target), "--code", str(code),
                *int6]) == 0
    assert target - 0.02 * full < out.stat().st_size + 1000 <= target
    state, meta = read_artifact(out)
    assert set(state) == set(model.state_dict())
    assert meta["config"]["quant"]["prune_frac"] > 0 or meta["config"]["quant"]["scheme"] != "int6_row"
    assert "fit: scheme" in capsys.readouterr().out
