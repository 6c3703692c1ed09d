"""Atomic file writes: a file at its final path is either the old version or the complete new one.

Shards, tokenizers, checkpoints and artifacts are read by later stages that trust their size and
header; a crash or Ctrl-C mid-write must never leave a truncated file under the real name. Writers
fill a temporary file in the same directory (so the rename never crosses file systems), flush and
fsync it, then os.replace it over the target; on any exception the temporary file is removed.
Standard library only, so compress/ and train/ can reuse it without extra dependencies.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_DEFAULT_MODE = 0o644  # mkstemp creates 0600 files; results are meant to be shared like normal files


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; it replaces `path` when the block exits cleanly.

    mode is "wb" (bytes) or "w" (UTF-8 text). Parent directories are created. If the block raises,
    the temporary file is deleted and `path` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode={mode!r}: use 'wb' or 'w'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _DEFAULT_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically and return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    # Persists the rename itself (POSIX); some platforms cannot open directories, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
