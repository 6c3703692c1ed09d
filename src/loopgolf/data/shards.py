"""Token shard files, bit-compatible with the Parameter Golf challenge's data loader.

Layout (little-endian): a header of 256 int32 (magic 20240520, version 1, token count, then zeros)
followed by that many uint16 token ids, so a valid file is exactly 1024 + 2 * n_tokens bytes.
Every read validates the header and the file size before touching the payload: a truncated or
padded shard would otherwise silently shift or drop tokens. Errors are ShardError (a ValueError)
whose message names the file and how to fix it.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .atomic import atomic_open

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN_ID = 65535  # payload is uint16

_REMAKE = "re-run `loopgolf data tokenize`"


class ShardError(ValueError):
    """A missing, malformed or mismatched shard; the message names the file and the fix."""


def write_shard(path: str | os.PathLike, tokens) -> Path:
    """Write `tokens` (any integer array-like) as one shard, atomically; returns the path."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.size == 0:
        arr = arr.astype(np.int64)  # np.asarray([]) is float64; an empty shard is still valid
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ShardError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > MAX_TOKEN_ID:
            bad = lo if lo < 0 else hi
            raise ShardError(
                f"{path}: token id {bad} does not fit a shard (uint16 ids 0..{MAX_TOKEN_ID}); "
                "use a tokenizer with at most 65536 pieces")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, arr.size
    payload = arr.astype("<u2", copy=False)
    with atomic_open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(memoryview(np.ascontiguousarray(payload)).cast("B"))
    return path


def read_header(path: str | os.PathLike) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: no such shard; check the path or {_REMAKE}") from None
    if not path.is_file():
        raise ShardError(f"{path}: not a regular file; pass shard files (*.bin)")
    if size < HEADER_BYTES:
        raise ShardError(
            f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte header; "
            f"the shard is truncated, {_REMAKE}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise ShardError(
            f"{path}: bad magic {int(header[0])} (expected {MAGIC}); this is not a token shard "
            f"or it is corrupted, {_REMAKE}")
    if int(header[1]) != VERSION:
        raise ShardError(
            f"{path}: unsupported shard version {int(header[1])} (expected {VERSION}); {_REMAKE}")
    n = int(header[2])
    if n < 0:
        raise ShardError(f"{path}: header says {n} tokens; the header is corrupted, {_REMAKE}")
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        what = "truncated" if size < expected else "padded or has trailing garbage"
        raise ShardError(
            f"{path}: file is {size} bytes but its header says {n} tokens (expected {expected} "
            f"bytes); the shard is {what}, {_REMAKE}")
    return n


def load_shard(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Return a validated shard's tokens as uint16: a read-only memmap, or an in-memory copy."""
    n = read_header(path)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint16)
        empty.setflags(write=False)
        return empty
    if mmap:
        return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    tokens = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)
    if tokens.size != n:
        raise ShardError(f"{path}: read {tokens.size} of {n} tokens; the file changed while reading")
    return tokens.astype(np.uint16, copy=False)


def list_shards(pattern: str | os.PathLike) -> list[Path]:
    """Sorted shard paths matching a glob pattern (`~` is expanded); ShardError if none match."""
    pattern = os.path.expanduser(str(pattern))
    paths = sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
    if not paths:
        raise ShardError(
            f"no shard files match {pattern!r}; check the pattern (quote it so the shell does not "
            f"expand it) or create shards with `loopgolf data tokenize`")
    return paths


def check_vocab(paths: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int) -> None:
    """Raise ShardError if any shard holds a token id >= vocab_size.

    `paths` is a glob pattern (str), a single shard (Path) or an iterable of shard paths.
    """
    if isinstance(paths, str):
        files = list_shards(paths)
    elif isinstance(paths, os.PathLike):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    chunk = 1 << 24  # bounded pages touched at a time; shards are ~200 MB
    for path in files:
        tokens = load_shard(path)
        hi = -1
        for start in range(0, tokens.size, chunk):
            hi = max(hi, int(tokens[start:start + chunk].max()))
        if hi >= vocab_size:
            raise ShardError(
                f"{path}: holds token id {hi} but the tokenizer/model vocab is {vocab_size}: the "
                "shards were made with another tokenizer; re-tokenize with this tokenizer or set "
                "model.vocab_size to match")
