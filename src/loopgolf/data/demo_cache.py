"""The offline demo corpus (`loopgolf demo`, `loopgolf data demo`): a tokenizer trained on the
package's demo documents plus train and val shards, built once into a cache folder and reused.

The cache is valid only while its stamp (demo_stamp.json, written last like a manifest) matches the
settings and the documents and every file it lists is present with its size; otherwise it is rebuilt.
Several processes asking at once (torchrun ranks) take a file lock: one builds, the others wait.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .atomic import atomic_write_text
from .corpus import demo_documents, split_documents
from .prepare import tokenize_documents
from .shards import list_shards, read_header
from .tokenizer import TokenizerError, check_tokenizer, load_tokenizer, train_tokenizer

_DEMO_FORMAT = 1  # bump when the demo layout or recipe changes, to invalidate old caches
_DEMO_SEED = 0
_DEMO_TOKENIZER_MAX_DOCS = 20_000  # all 10k ovos docs train in ~1 s; the cap guards larger corpora
_DEMO_PREFIX = "demo"


def prepare_demo(cache_dir: str | os.PathLike, vocab_size: int = 1024, val_fraction: float = 0.05,
                 progress: bool = False) -> dict:
    """Build (once) the offline demo corpus: a tokenizer plus train and val shards in cache_dir.

    The cache is reused only if its stamp (written last) matches the settings and the documents,
    and every file it lists is present and valid; otherwise everything is rebuilt.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    docs, source = demo_documents()
    settings = {"format": _DEMO_FORMAT, "vocab_size": vocab_size, "val_fraction": val_fraction,
                "seed": _DEMO_SEED, "docs_sha256": _docs_digest(docs), "source": source}
    stamp_path = cache_dir / "demo_stamp.json"
    with _locked(cache_dir / ".demo.lock"):
        stamp = _read_json(stamp_path)
        if stamp is None or stamp.get("settings") != settings or not _cache_valid(cache_dir, stamp):
            stamp_path.unlink(missing_ok=True)  # an interrupted rebuild must not look complete
            stamp = _build_demo(cache_dir, docs, settings, progress)
            atomic_write_text(stamp_path, json.dumps(stamp, indent=2) + "\n")
    return {
        "train": str(cache_dir / f"{_DEMO_PREFIX}_train_*.bin"),
        "val": str(cache_dir / f"{_DEMO_PREFIX}_val_*.bin"),
        "tokenizer": str(cache_dir / stamp["tokenizer"]),
        "source": source,
        **stamp["counts"],
    }


def _build_demo(cache_dir: Path, docs: list[str], settings: dict, progress: bool) -> dict:
    for old in cache_dir.glob(f"{_DEMO_PREFIX}_*.bin"):
        old.unlink()
    train, val = split_documents(docs, settings["val_fraction"], settings["seed"])
    if not train or not val:
        raise ValueError(f"demo split gave {len(train)} train / {len(val)} val documents; "
                         "choose val_fraction in (0, 1)")
    prefix = cache_dir / f"tokenizer_{settings['vocab_size']}"
    model = train_tokenizer(train, settings["vocab_size"], prefix, max_docs=_DEMO_TOKENIZER_MAX_DOCS)
    problems = check_tokenizer(load_tokenizer(model), val[:64])
    if problems:
        raise TokenizerError(f"{model}: demo tokenizer failed its self-test: {'; '.join(problems)}")
    counts = {"n_train_docs": len(train), "n_val_docs": len(val)}
    files = {}
    for split, split_docs in (("train", train), ("val", val)):
        paths = tokenize_documents(split_docs, model, cache_dir, split, workers=1,
                                   progress=progress, prefix=_DEMO_PREFIX)
        counts[f"{split}_tokens"] = sum(read_header(p) for p in paths)
        files.update({p.name: p.stat().st_size for p in paths})
    files[model.name] = model.stat().st_size
    return {"settings": settings, "tokenizer": model.name, "files": files, "counts": counts}


def _cache_valid(cache_dir: Path, stamp: dict) -> bool:
    try:
        files = stamp["files"]
        for name, size in files.items():
            path = cache_dir / name
            if not path.is_file() or path.stat().st_size != size:
                return False
            if name.endswith(".bin"):
                read_header(path)
        for split in ("train", "val"):
            found = {p.name for p in list_shards(str(cache_dir / f"{_DEMO_PREFIX}_{split}_*.bin"))}
            if found != {n for n in files if n.startswith(f"{_DEMO_PREFIX}_{split}_")}:
                return False
        return isinstance(stamp["tokenizer"], str) and isinstance(stamp["counts"], dict)
    except (KeyError, TypeError, AttributeError, ValueError):  # ShardError is a ValueError
        return False


def _docs_digest(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    # Several processes (e.g. torchrun ranks) may ask for the demo at once: one builds, others wait.
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent builds are still atomic per file
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
