"""Turn documents into challenge-format token shards (the cached demo corpus: data/demo_cache.py).

Each document becomes [BOS] + its SentencePiece ids (no EOS), packed back to back; shards are cut
at exactly shard_tokens tokens, so a document may continue in the next shard, as in the challenge's
fineweb shards. Encoding runs in worker processes that each load the tokenizer once; results are
consumed in submission order, so the bytes written never depend on the number of workers, and at
most one shard plus a few chunks of tokens are held in memory. Workers exit on their own when the
parent dies (even by SIGKILL), so an interrupted run leaves no processes behind.

prepare_corpus writes into a hidden staging folder inside the output folder, then moves the shards
into place and writes manifest.json last: a folder with shards but no manifest is an unfinished
run (`loopgolf data info` refuses it), and an interrupted run leaves the old shards untouched or
no manifest, never a manifest that lies.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from .atomic import atomic_write_text
from .corpus import CorpusError, iter_documents, overlap, split_documents
from .shards import read_header, write_shard
from .tokenizer import BOS_ID, TokenizerError, load_tokenizer
from .transform import TextTransform, get_transform, piece_bytes_table, sidecar_path, token_byte_counts

_CHUNK_DOCS = 512  # documents per worker task
_CHUNK_CHARS = 1 << 20  # ...or fewer, when documents are long, to bound task size
_WINDOW_PER_WORKER = 4  # tasks in flight per worker: keeps workers busy, bounds memory
_STAGING = ".staging-"  # prefix of prepare_corpus's work folder; hidden, so no glob sees its shards
_PARENT_POLL_S = 0.5


def tokenize_documents(docs: Iterable[str], tokenizer_path: str | os.PathLike, out_dir: str | os.PathLike,
                       split: str, shard_tokens: int = 10**8, workers: int = 0, progress: bool = True,
                       prefix: str = "fineweb", transform: str | None = None) -> list[Path]:
    """Encode documents into `{prefix}_{split}_{i:06d}.bin` shards in out_dir; returns their paths.

    workers=0 uses every available CPU; workers=1 encodes in this process. Shards of this
    prefix and split left over from an earlier, longer run are deleted. With a transform (a name
    in transform.TRANSFORMS) documents are rewritten before encoding and each shard gets a byte
    sidecar (transform.sidecar_path) holding every token's original UTF-8 byte count.
    """
    if transform is not None:
        get_transform(transform)  # fail on a bad name before any work
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens={shard_tokens} must be >= 1")
    for name, value in (("split", split), ("prefix", prefix)):
        if not value or os.sep in value or "/" in value or any(c in value for c in "*?["):
            raise ValueError(f"{name}={value!r}: use a plain name such as 'train' or 'fineweb'")
    tokenizer_path = Path(tokenizer_path)
    sp = load_tokenizer(tokenizer_path)
    if sp.vocab_size() > 65536:
        raise TokenizerError(f"{tokenizer_path}: {sp.vocab_size()} pieces do not fit uint16 shards")
    if sp.bos_id() != BOS_ID:
        raise TokenizerError(
            f"{tokenizer_path}: BOS id is {sp.bos_id()}, but shards start documents with id "
            f"{BOS_ID}; train the tokenizer with bos_id={BOS_ID} (loopgolf.data.tokenizer)")
    workers = workers or _cpu_count()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    paths: list[Path] = []
    buf = np.empty(shard_tokens, dtype=np.uint16)  # untouched pages cost no memory
    side = np.empty(shard_tokens, dtype=np.uint16) if transform else None
    fill = 0
    total = len(docs) if hasattr(docs, "__len__") else None
    bar = tqdm(total=total, desc=f"tokenize {split}", unit="doc", file=sys.stderr,
               disable=None if progress else True, dynamic_ncols=True)  # None: only on a TTY
    with bar:
        for n_docs, tokens, counts in _encoded_chunks(docs, tokenizer_path, sp, workers, transform):
            pos = 0
            while pos < tokens.size:
                take = min(shard_tokens - fill, tokens.size - pos)
                buf[fill:fill + take] = tokens[pos:pos + take]
                if side is not None:
                    side[fill:fill + take] = counts[pos:pos + take]
                fill += take
                pos += take
                if fill == shard_tokens:
                    paths.append(_write(out_dir, prefix, split, len(paths), buf, side))
                    fill = 0
            bar.update(n_docs)
    if fill:
        paths.append(_write(out_dir, prefix, split, len(paths), buf[:fill],
                            None if side is None else side[:fill]))
    if not paths:
        raise ValueError(f"no documents to tokenize for split {split!r}")
    _remove_stale_shards(out_dir, prefix, split, keep=len(paths))
    if side is None:  # sidecars of an earlier transformed run no longer describe these tokens
        _remove_stale_shards(out_dir / "bytes", prefix, split, keep=0)
    return paths


def _write(out_dir: Path, prefix: str, split: str, index: int, tokens: np.ndarray,
           counts: np.ndarray | None) -> Path:
    path = _shard_path(out_dir, prefix, split, index)
    if counts is not None:  # the sidecar first: a token shard without its sidecar is refused
        write_shard(sidecar_path(path), counts)
    return write_shard(path, tokens)


def _shard_path(out_dir: Path, prefix: str, split: str, index: int) -> Path:
    return out_dir / f"{prefix}_{split}_{index:06d}.bin"


def _shard_glob(out_dir: Path, prefix: str, split: str) -> str:
    return str(out_dir / f"{prefix}_{split}_{'[0-9]' * 6}.bin")


def _remove_stale_shards(out_dir: Path, prefix: str, split: str, keep: int) -> None:
    for p in out_dir.glob(Path(_shard_glob(out_dir, prefix, split)).name):
        if int(p.stem.rsplit("_", 1)[1]) >= keep:
            p.unlink()
            sidecar_path(p).unlink(missing_ok=True)


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU limits
    return os.cpu_count() or 1


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


_Encoded = tuple[int, np.ndarray, np.ndarray | None]  # docs, tokens, byte sidecar


def _encode(sp: spm.SentencePieceProcessor, docs: list[str],
            transform: tuple[TextTransform, list[bytes]] | None = None) -> _Encoded:
    if transform is not None:
        docs = [transform[0].encode(d) for d in docs]
    pieces = sp.encode(docs)
    out = np.empty(sum(len(p) for p in pieces) + len(pieces), dtype=np.uint16)
    side = np.empty_like(out) if transform is not None else None
    pos = 0
    for ids in pieces:
        out[pos] = BOS_ID
        out[pos + 1:pos + 1 + len(ids)] = ids
        if side is not None:
            side[pos:pos + 1 + len(ids)] = token_byte_counts(ids, transform[1], transform[0])
        pos += 1 + len(ids)
    return len(docs), out, side


def _transform_for(sp: spm.SentencePieceProcessor, name: str | None):
    return None if name is None else (get_transform(name), piece_bytes_table(sp))


_worker_sp: spm.SentencePieceProcessor | None = None
_worker_transform = None


def _exit_with_parent(parent_pid: int) -> None:
    """A daemon thread that ends this worker once its parent is gone (reparented: getppid changes).
    A SIGKILLed parent runs no cleanup, and an idle worker would otherwise wait on its task queue
    forever: each worker holds that queue's write end too, so it never sees end-of-file."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(model_path: str, sha256: str, transform: str | None = None,
                 parent_pid: int | None = None) -> None:
    global _worker_sp, _worker_transform
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    _worker_sp = load_tokenizer(model_path, expected_sha256=sha256)
    _worker_transform = _transform_for(_worker_sp, transform)


def _encode_in_worker(docs: list[str]) -> _Encoded:
    assert _worker_sp is not None, "worker started without _init_worker"
    return _encode(_worker_sp, docs, _worker_transform)


def _encoded_chunks(docs: Iterable[str], model_path: Path, sp: spm.SentencePieceProcessor,
                    workers: int, transform: str | None = None) -> Iterator[_Encoded]:
    if workers <= 1:
        tf = _transform_for(sp, transform)
        for chunk in _chunks(docs):
            yield _encode(sp, chunk, tf)
        return
    # A bounded window of futures, consumed in submission order, rather than Pool.imap: imap's
    # feeder thread drains the whole input iterator into memory, and a multiprocessing.Pool whose
    # worker dies (OOM kill, failed start) hangs forever, where ProcessPoolExecutor raises.
    # "spawn" because forking a parent that holds threads (torch, tqdm) can deadlock the children.
    # Workers get the path and digest, not the model bytes: CPython's spawn launcher blocks
    # forever writing start-up data larger than a pipe buffer to a child that died on start.
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker,
                               initargs=(str(model_path.resolve()), digest, transform, os.getpid()))
    window: deque = deque()
    try:
        for chunk in _chunks(docs):
            window.append(pool.submit(_encode_in_worker, chunk))
            if len(window) >= workers * _WINDOW_PER_WORKER:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"a tokenizing worker process died ({e}); retry with workers=1, check memory, and "
            "call from a script file guarded by `if __name__ == '__main__':`") from None
    finally:
        for future in window:
            future.cancel()
        pool.shutdown(wait=True)


# --- corpora --------------------------------------------------------------------------------------
def prepare_corpus(inputs: list[Path], tokenizer: str | os.PathLike, out_dir: str | os.PathLike,
                   val_fraction: float = 0.01, seed: int = 0, shard_tokens: int = 10**8,
                   workers: int = 0, prefix: str = "fineweb", text_key: str = "text",
                   progress: bool = True, transform: str | None = None) -> dict:
    """Read documents from files, split them, tokenize both splits; write and return manifest.json.

    All documents are held in memory once (the duplicate-free split needs them); tokens are not.
    The split is checked by SHA-256 of each document's text: the manifest's overlap must be 0.
    Shards are staged in a hidden folder and moved into out_dir before the manifest is written.
    """
    out_dir = Path(out_dir)
    docs = list(itertools.chain.from_iterable(iter_documents(p, text_key) for p in inputs))
    n_read = len(docs)
    if not n_read:
        raise CorpusError(f"{', '.join(map(str, inputs))}: no documents found (empty or only "
                          "whitespace); pass .txt/.jsonl/.jsonl.zst files with text")
    train, val = split_documents(docs, val_fraction, seed)
    del docs
    if not train or (val_fraction > 0 and not val):
        raise CorpusError(
            f"{n_read} documents gave {len(train)} train and {len(val)} val documents; add "
            "documents or change --val-fraction")
    shared = overlap(train, val)
    if shared:  # split_documents makes this impossible; the check guards the manifest's claim
        raise RuntimeError(f"{shared} documents are in both train and val")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{os.getpid()}-", dir=out_dir))
    try:
        splits = {}
        for split, split_docs in (("val", val), ("train", train)):
            if not split_docs:
                continue
            paths = tokenize_documents(split_docs, tokenizer, staging, split, shard_tokens, workers,
                                       progress, prefix, transform)
            splits[split] = {
                "pattern": f"{prefix}_{split}_*.bin",
                "shards": [p.name for p in paths],
                "docs": len(split_docs),
                "tokens": sum(read_header(p) for p in paths),
            }
        manifest = {
            "inputs": [str(p) for p in inputs],
            "tokenizer": str(Path(tokenizer).resolve()),
            "tokenizer_sha256": hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest(),
            "val_fraction": val_fraction,
            "seed": seed,
            "shard_tokens": shard_tokens,
            "docs_read": n_read,
            "duplicates_dropped": n_read - len(train) - len(val),
            "overlap": shared,
            "transform": transform,
            "splits": splits,
        }
        _publish(staging, out_dir, prefix, splits, transform is not None)
        atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _publish(staging: Path, out_dir: Path, prefix: str, splits: dict, sidecars: bool) -> None:
    """Move staged shards (and sidecars) into out_dir; the old manifest goes first, since from the
    first move on it no longer describes the folder."""
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dst = out_dir / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    for split, entry in splits.items():
        _remove_stale_shards(out_dir, prefix, split, keep=len(entry["shards"]))
        if not sidecars:  # sidecars of an earlier transformed run no longer describe these tokens
            _remove_stale_shards(out_dir / "bytes", prefix, split, keep=0)


def _remove_abandoned_staging(out_dir: Path) -> None:
    """Delete staging folders of runs that died (their pid, in the name, is gone)."""
    for d in out_dir.glob(f"{_STAGING}*"):
        try:
            os.kill(int(d.name[len(_STAGING):].split("-", 1)[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass  # not ours, or alive under another user
