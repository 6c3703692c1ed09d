"""Rotating atomic checkpoints, the resume config check, and a full disk."""
import errno
import json

import pytest
import torch

from loopgolf.presets import get_preset
from loopgolf.train import checkpoint as ckmod
from loopgolf.train.checkpoint import (CheckpointError, CheckpointStore, CheckpointWriteError,
                                       check_resumable, config_differences, load_checkpoint)


def _payload(step, cfg=None):
    return {"model": {"w": torch.full((2,), float(step))}, "optimizers": [], "step": step,
            "train_seconds": 1.0, "position": 0, "config_json": (cfg or get_preset("tiny")).to_json()}


def test_store_keeps_the_newest_two(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    assert store.latest() is None
    for step in (10, 20, 30):
        store.save(_payload(step), step)
    assert [p.name for p in store.paths()] == ["checkpoint-00000020.pt", "checkpoint-00000030.pt"]
    ck, path = store.load_latest()
    assert ck["step"] == 30 and path == store.path_for(30)
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_full_disk_keeps_previous_checkpoints(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ck")
    store.save(_payload(10), 10)
    before = store.path_for(10).read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckmod, "atomic_write_bytes", full)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint-00000020.pt: cannot write the checkpoint "
                       r"\(the disk is full\); the previous checkpoint .*checkpoint-00000010.pt is intact; "
                       r"free space and rerun with --resume") as info:  # the temporary dir is full too
        store.save(_payload(20), 20)
    assert "saved to" not in str(info.value)
    assert store.paths() == [store.path_for(10)] and store.path_for(10).read_bytes() == before


def test_full_run_disk_rescues_the_weights_elsewhere(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "run" / "ck")
    real = ckmod.atomic_write_bytes

    def run_disk_full(path, data):
        if (tmp_path / "run") in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(ckmod, "atomic_write_bytes", run_disk_full)
    monkeypatch.setattr(ckmod.tempfile, "gettempdir", lambda: str(tmp_path / "other_disk"))
    with pytest.raises(CheckpointWriteError, match=r"no earlier checkpoint exists; the current weights "
                       r"were saved to .*other_disk/loopgolf-rescue-\w+/checkpoint-00000007.pt: free space, "
                       r"move it into .*/ck/ and rerun with --resume"):
        store.save(_payload(7), 7)
    (rescued,) = (tmp_path / "other_disk").rglob("checkpoint-00000007.pt")
    assert load_checkpoint(rescued)["step"] == 7 and store.paths() == []


def test_resume_refuses_shape_changes_and_allows_budget_changes(tmp_path):
    old = get_preset("tiny")
    ck = _payload(5, old)
    new = get_preset("tiny").override(["train.budget_s=900", "train.log_every=7"])
    check_resumable(ck, tmp_path / "c.pt", new.to_dict())  # budget and logging may change
    wider = get_preset("tiny").override(["model.dim=64", "train.batch_tokens=2048"])
    assert config_differences(old.to_dict(), wider.to_dict()) == [
        "model.dim: 32 -> 64", "train.batch_tokens: 1024 -> 2048"]
    with pytest.raises(CheckpointError, match=r"--resume with a different config \(model.dim: 32 -> 64; "
                       r"train.batch_tokens: 1024 -> 2048\)"):
        check_resumable(ck, tmp_path / "c.pt", wider.to_dict())


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from; start without --resume"):
        CheckpointStore(tmp_path / "none").load_latest()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(bad)
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}}, partial)
    with pytest.raises(CheckpointError, match="lacks 'optimizers'"):
        load_checkpoint(partial)
    json.dumps(_payload(1)["config_json"])  # the config travels as JSON text, not pickled objects
