"""The pipeline's budget fit: quant.fit_target with GPTQ lands the artifact + code under the target,
the artifact's embedded config (what the reloaded model says) names the k that was used, and an
impossible target still leaves the configured artifact (and the error) behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loopgolf.compress.artifact import read_artifact
from loopgolf.config import ConfigError, RunConfig
from loopgolf.pipeline import ARTIFACT_NAME, model_from_artifact, train_and_compress
from loopgolf.presets import get_preset

CODE = 5_000


def tiny_gptq(shards: dict, *sets: str) -> RunConfig:
    d = shards["dir"]
    return get_preset("tiny").override([
        f"data.train={d}/*_train_*.bin", f"data.val={d}/*_val_*.bin",
        f"data.tokenizer={shards['tokenizer']}", "train.device=cpu",
        "quant.gptq=true", "quant.gptq_calib_batches=2", "quant.clip=sdclip", "quant.sdclip_k=8",
        "quant.scheme=int6_row", "quant.passthrough_max_numel=256", "quant.row_scale_min=0",
        "quant.codec=zlib", "train.max_steps=4", "eval.max_tokens=2048", *sets]).validate()


def test_gptq_fit_target_lands_under_and_is_recorded(tiny_shards, tmp_path: Path) -> None:
    # an impossible target keeps the trained model: the artifact as configured, the error recorded
    plain = train_and_compress(tiny_gptq(tiny_shards, "quant.fit_target=1"), tmp_path / "plain",
                               code_bytes=CODE)
    assert plain["code_bytes"] == CODE and "cannot fit under 1 B" in plain["fit"]["error"]
    assert plain["total_bytes"] == (tmp_path / "plain" / ARTIFACT_NAME).stat().st_size + CODE
    target = int(plain["total_bytes"] * 0.9)  # forces a coarser grid than k = 8
    run_dir = tmp_path / "fit"
    res = train_and_compress(tiny_gptq(tiny_shards, f"quant.fit_target={target}"), run_dir,
                             code_bytes=CODE)
    artifact = run_dir / ARTIFACT_NAME
    assert res["total_bytes"] == artifact.stat().st_size + CODE <= target
    fit = res["fit"]
    assert fit["sdclip_k"] > 8.0 and fit["total_bytes"] == res["total_bytes"]
    assert fit["trials"][0]["sdclip_k"] == 8.0 and fit["trials"][0]["total_bytes"] > target
    assert "fit_s" in res["phases"]
    _, meta = read_artifact(artifact)
    assert meta["config"]["quant"]["sdclip_k"] == fit["sdclip_k"]
    assert meta["config"]["quant"]["prune_frac"] == fit["prune_frac"]
    _, cfg = model_from_artifact(artifact, "cpu")
    assert cfg.quant.sdclip_k == fit["sdclip_k"] and cfg.quant.fit_target == target
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["fit"]["sdclip_k"] == fit["sdclip_k"] and len(saved["fit"]["trials"]) >= 2
    assert f"fit target_bytes:{target}" in (run_dir / "train.log").read_text()


def test_gptq_on_the_tied_embedding_runs_end_to_end(tiny_shards, tmp_path: Path) -> None:
    """record-loop345's export (#1493): GPTQ on the tied embedding too, int8 with its own k = 20."""
    cfg = tiny_gptq(tiny_shards, "quant.gptq_embed=true", "quant.sdclip_k_embed=20",
                    "quant.bits_rules=attn|mlp=6,tok_emb=8")
    res = train_and_compress(cfg, tmp_path / "emb", code_bytes=CODE)
    _, meta = read_artifact(tmp_path / "emb" / ARTIFACT_NAME)
    q = meta["config"]["quant"]
    assert q["gptq_embed"] is True and q["sdclip_k_embed"] == 20.0 and "calibration_s" in res["phases"]
    model, _ = model_from_artifact(tmp_path / "emb" / ARTIFACT_NAME, "cpu")
    w = model.tok_emb.weight.detach()
    # each row lies on a grid of step 20 std / 127 (the matrices' k = 8 would give 0.4 of that)
    ratio = torch.stack([torch.unique(r).diff().min() / (20.0 * r.std() / 127) for r in w])
    assert 0.95 < float(ratio.median()) < 1.05


def test_fit_target_validation() -> None:
    for bad in ("quant.fit_target=-1", "quant.fit_target=16000001"):
        with pytest.raises(ConfigError, match="quant.fit_target"):
            get_preset("tiny").override([bad]).validate()
    # GPTQ with a clip that has no k is fitted by +-1 pruning, then widths (PR #1290's order)
    assert get_preset("tiny").override(["quant.fit_target=15990000", "quant.gptq=true",
                                        "quant.clip=search"]).validate().quant.clip == "search"
    assert get_preset("tiny").override(["quant.fit_target=15_990_000"]).validate().quant.fit_target \
        == 15_990_000


def test_train_calibration_stops_at_its_reserve():
    """GPTQ calibration on training batches counts against the training budget: once the reserve is
    spent, no further batch starts (at least one always runs)."""
    import time

    import torch

    from loopgolf.run_phases import UntilDeadline

    batches = [torch.zeros(1, 4)] * 5
    late = UntilDeadline(batches, time.perf_counter() - 1.0, torch.device("cpu"))
    assert len(list(late)) == 1 and late.used == 1
    early = UntilDeadline(batches, time.perf_counter() + 60.0, torch.device("cpu"))
    assert len(list(early)) == 5 and early.used == 5
