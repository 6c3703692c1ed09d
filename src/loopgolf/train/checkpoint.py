"""Training checkpoints: model, optimizers, weight averages, step, clock, data position and RNG,
written atomically into a rotating folder (the newest KEEP files survive).

Checkpoints are our own files but are still loaded with `torch.load(weights_only=True)`, which
refuses arbitrary pickled objects; the run config travels as a JSON string inside, and `--resume`
compares it with the new run's config: fields that change tensor shapes or the data stream
(SHAPE_FIELDS) must match, anything else (budget, logging) may change. Files are written through
data/atomic.py, so a crash or a full disk leaves the previous checkpoints intact.
"""
from __future__ import annotations

import errno
import hashlib
import io
import tempfile
import json
import re
from pathlib import Path

import torch

from loopgolf.data.atomic import atomic_write_bytes

KEEP = 2  # checkpoints kept: the newest and the one before it
_NAME = re.compile(r"^checkpoint-(\d{8})\.pt$")
REQUIRED = ("model", "optimizers", "step", "train_seconds", "position", "config_json")
# config fields that change the tensors or the token stream: a resume must not change them
SHAPE_FIELDS = ("model.", "data.seq_len", "data.train", "train.batch_tokens", "train.seed",
                "quant.qat", "optim.ema_horizon_frac", "optim.swa_start_frac")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run; the message says the fix."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); earlier checkpoints are intact."""


def save_checkpoint(path: Path, payload: dict) -> Path:
    """torch.save `payload` to `path` atomically (serialized in memory first, then one write)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; start without --resume")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt zip archives
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}); "
                              "delete it to restart the run from scratch") from None
    for key in REQUIRED:
        if key not in ck:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}; it was not written by this loopgolf")
    return ck


class CheckpointStore:
    """`folder/checkpoint-<step>.pt`, newest last; `save` writes the new file before deleting old ones."""

    def __init__(self, folder: Path, keep: int = KEEP):
        self.folder, self.keep = Path(folder), keep

    def paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))

    def latest(self) -> Path | None:
        found = self.paths()
        return found[-1] if found else None

    def path_for(self, step: int) -> Path:
        return self.folder / f"checkpoint-{step:08d}.pt"

    def save(self, payload: dict, step: int) -> Path:
        """Write checkpoint `step`, then drop all but the newest `keep`. If it cannot be written,
        the previous ones stay and the weights go to a rescue file in the temporary directory
        (another file system, usually); CheckpointWriteError says where and how to resume."""
        path = self.path_for(step)
        try:
            save_checkpoint(path, payload)
        except OSError as e:
            prev = self.latest()
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            rescue = self.rescue(payload, step)
            kept = (f"the current weights were saved to {rescue}: free space, move it into {self.folder}/ "
                    "and rerun with --resume" if rescue else "free space and rerun with --resume")
            raise CheckpointWriteError(
                f"{path}: cannot write the checkpoint ({why}); "
                f"{'the previous checkpoint ' + str(prev) + ' is intact' if prev else 'no earlier checkpoint exists'}"
                f"; {kept}") from None
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def rescue(self, payload: dict, step: int) -> Path | None:
        """`payload` written outside the run folder (the temporary directory); None if that fails too."""
        tag = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"loopgolf-rescue-{tag}" / self.path_for(step).name
        try:
            return save_checkpoint(path, payload)
        except OSError:
            return None

    def load_latest(self, map_location="cpu") -> tuple[dict, Path]:
        path = self.latest()
        if path is None:
            raise CheckpointError(f"{self.folder}: no checkpoint to resume from; start without --resume "
                                  "(checkpoints are written when train.checkpoint_every > 0, or by default "
                                  "when train.budget_s is over a few minutes)")
        return load_checkpoint(path, map_location), path


def config_differences(saved: dict, new: dict) -> list[str]:
    """Dotted SHAPE_FIELDS whose values differ between two config dicts, as 'field: old -> new'."""
    flat_old, flat_new = _flatten(saved), _flatten(new)
    out = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in SHAPE_FIELDS):
            if flat_old.get(key) != flat_new.get(key):
                out.append(f"{key}: {flat_old.get(key)!r} -> {flat_new.get(key)!r}")
    return out


def check_resumable(ck: dict, path: Path, new_config: dict) -> None:
    """Refuse a resume whose config changes shape-affecting fields, naming each one."""
    try:
        saved = json.loads(ck["config_json"])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the checkpoint's config is not JSON; it was not written by "
                              "this loopgolf") from None
    diff = config_differences(saved, new_config)
    if diff:
        raise CheckpointError(f"{path}: --resume with a different config ({'; '.join(diff)}); "
                              "resume with the saved config (--config <run>/config.json) or start a new run")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
