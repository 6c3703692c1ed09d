"""Training checkpoints: model, optimizer states, step, clock and data position, written atomically.

Checkpoints are our own files but are still loaded with `torch.load(weights_only=True)`, which
refuses arbitrary pickled objects; the run config travels as a JSON string inside.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; start without --resume")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt zip archives
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}); "
                              "delete it to restart the run from scratch") from None
    for key in ("model", "optimizers", "step", "train_seconds", "position", "config_json"):
        if key not in ck:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}; it was not written by this loopgolf")
    return ck
