"""Fixtures of the lab tests."""
import json

import pytest


def fake_run(tmp_path, seed, loss):
    d = tmp_path / f"seed_{seed}"
    d.mkdir()
    (d / "result.json").write_text(json.dumps({
        "val_loss": loss, "val_bpb": loss / 1.7, "val_bpb_prequant": loss / 1.71, "steps": 100,
        "ms_per_step": 90.0, "train_seconds": 590.0, "artifact_bytes": 15_000_000, "code_bytes": 60_000,
        "total_bytes": 15_060_000, "eval": {"eval_seconds": 12.5}}))
    (d / "train.log").write_text(f"seed {seed}\n")
    (d / "env.json").write_text(json.dumps({"torch": "2.9", "gpus": ["H100"], "loopgolf": "0.1.0"}))
    return d


@pytest.fixture
def fake_seed_run():
    """fake_seed_run(dir, seed, val_loss) -> a seed_S run directory with result.json, train.log, env.json."""
    return fake_run
