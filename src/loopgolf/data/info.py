"""`loopgolf data info`: what a shard folder holds (tokens, documents, bytes per token) and checks.

Before spending GPU hours, a user wants to know that the shards are whole, match the tokenizer,
count bytes the way the challenge does, and that no validation document is also trained on
(challenge issues #897, #2127, #2146; users.md 1.1). Everything is computed from the shards
themselves, streaming one shard at a time, so it works on downloaded challenge shards as well as
on our own. Documents are the stretches between BOS tokens; train/val overlap compares a hash of
each document's token ids, so it needs no text.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .luts import build_byte_luts, target_bytes
from .shards import ShardError, load_shard, read_header
from .tokenizer import BOS_ID, SELFTEST_TEXTS, check_tokenizer, load_tokenizer
from .transform import SIDECAR_DIR, sidecar_path

_CHUNK = 1 << 24  # tokens per numpy pass: bounded memory on 100M-token shards


def find_shards(path: str | os.PathLike) -> dict[str, list[Path]]:
    """Shards of a folder (or glob) grouped by split: names with _train_ / _val_, else "other"."""
    path = str(path)
    files = (sorted(Path(path).glob("*.bin")) if Path(path).is_dir()
             else sorted(Path(p) for p in glob.glob(os.path.expanduser(path))))
    files = [f for f in files if f.is_file() and not f.name.startswith(".")
             and f.parent.name != SIDECAR_DIR]
    if not files:
        raise ShardError(f"{path}: no shard files (*.bin) here; pass a folder of shards or a glob")
    groups: dict[str, list[Path]] = {}
    for f in files:
        split = "train" if "_train_" in f.name else "val" if "_val_" in f.name else "other"
        groups.setdefault(split, []).append(f)
    return groups


_DEMO_STAMP = "demo_stamp.json"  # data/demo_cache.py's record, written last like a manifest


def completion_record(folder: Path) -> Path | None:
    """The file that says a shard folder is complete, written after its last shard: manifest.json
    (`data tokenize`), the demo cache's stamp, or the download's OUT/manifest.json (`data fineweb`)."""
    for cand in (folder / "manifest.json", folder / _DEMO_STAMP):
        if cand.is_file():
            return cand
    downloaded = folder.parent.parent / "manifest.json"
    return downloaded if folder.parent.name == "datasets" and downloaded.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _find_tokenizer(folder: Path) -> Path | None:
    tok = _read_json(folder / "manifest.json").get("tokenizer")
    if isinstance(tok, str) and tok and Path(tok).is_file():
        return Path(tok)
    tok = _read_json(folder / _DEMO_STAMP).get("tokenizer")
    if isinstance(tok, str) and tok and (folder / tok).is_file():
        return folder / tok
    # the layout `loopgolf data fineweb` writes: OUT/datasets/fineweb10B_spN and OUT/tokenizers
    models = sorted((folder.parent.parent / "tokenizers").glob("*.model"))
    vocab = folder.name.rsplit("_sp", 1)[-1]
    found = next((m for m in models if f"_{vocab}_" in m.name), None)
    if found is None:  # a single tokenizer next to the shards is theirs
        here = sorted(folder.glob("*.model"))
        found = here[0] if len(here) == 1 else None
    return found


def _split_stats(paths: list[Path], luts, val_hashes: set[bytes] | None,
                 collect: bool) -> tuple[dict, set[bytes], int]:
    """Stream one split; returns stats, its document hashes (if collect) and docs seen in val."""
    tokens = docs = text_tokens = max_id = 0
    n_bytes = 0
    side_bytes: int | None = 0 if sidecar_path(paths[0]).is_file() else None
    hashes: set[bytes] = set()
    shared = 0
    prev_last = BOS_ID
    doc = hashlib.blake2b(digest_size=16)
    started = False

    def close_doc() -> None:
        nonlocal shared
        h = doc.digest()
        if collect:
            hashes.add(h)
        if val_hashes is not None and h in val_hashes:
            shared += 1

    for path in paths:
        t = load_shard(path)
        tokens += t.size
        if side_bytes is not None:
            side = load_shard(sidecar_path(path)) if sidecar_path(path).is_file() else None
            if side is None or side.size != t.size:
                raise ShardError(f"{sidecar_path(path)}: byte sidecar missing or not aligned with {path}")
            side_bytes += int(side.sum(dtype=np.int64))
        for lo in range(0, t.size, _CHUNK):
            c = np.asarray(t[lo:lo + _CHUNK])
            max_id = max(max_id, int(c.max()))
            bos = np.flatnonzero(c == BOS_ID)
            docs += bos.size
            text_tokens += c.size - bos.size
            if luts is not None and max_id < len(luts):
                prev = np.concatenate(([prev_last], c[:-1]))
                n_bytes += int(target_bytes(luts, prev, c).sum())
            prev_last = int(c[-1])
            cuts = [0, *bos.tolist(), c.size]
            for a, b in zip(cuts[:-1], cuts[1:]):
                if a == b:
                    continue
                if c[a] == BOS_ID:
                    if started:
                        close_doc()
                    doc = hashlib.blake2b(digest_size=16)
                    started = True
                doc.update(c[a:b].tobytes())
    if started:
        close_doc()
    stats = {"shards": len(paths), "tokens": tokens, "documents": docs, "max_token_id": max_id,
             "text_tokens": text_tokens}
    if luts is not None and max_id < len(luts):
        stats["bytes"] = n_bytes
        stats["bytes_per_token"] = round(n_bytes / max(tokens, 1), 4)
        stats["bytes_per_text_token"] = round(n_bytes / max(text_tokens, 1), 4)
    if side_bytes is not None:
        stats["sidecar_bytes"] = side_bytes
    return stats, hashes, shared


def shard_info(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> dict:
    """Counts per split and a list of checks ({"check", "ok", "detail"}) for a shard folder or glob."""
    groups = find_shards(path)
    folder = Path(path) if Path(path).is_dir() else next(iter(groups.values()))[0].parent
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    bad = []
    for files in groups.values():
        for f in files:
            try:
                read_header(f)
            except ShardError as e:
                bad.append(str(e))
    check("headers", not bad, "; ".join(bad) or f"{sum(map(len, groups.values()))} shard headers and sizes valid")
    if bad:
        return {"path": str(path), "splits": {}, "checks": checks, "ok": False}

    tok_path = Path(tokenizer) if tokenizer else _find_tokenizer(folder)
    sp = luts = None
    if tok_path is not None:
        sp = load_tokenizer(tok_path)
        luts = build_byte_luts(sp, sp.vocab_size())
        problems = check_tokenizer(sp, SELFTEST_TEXTS)
        check("tokenizer_selftest", not problems, "; ".join(problems) or
              f"byte tables match decoded and normalized text on {len(SELFTEST_TEXTS)} texts")
        _check_manifest_tokenizer(folder, tok_path, check)
    else:
        check("tokenizer", False, "no tokenizer given or found; pass --tokenizer to count bytes")

    splits: dict[str, dict] = {}
    val_hashes: set[bytes] | None = None
    order = [s for s in ("val", "train", "other") if s in groups]
    for split in order:
        stats, hashes, shared = _split_stats(groups[split], luts, val_hashes if split == "train" else None,
                                             collect=split == "val")
        splits[split] = stats
        if split == "val":
            val_hashes = hashes
        if split == "train" and val_hashes is not None:
            check("train_val_disjoint", shared == 0,
                  f"{shared} train documents have the token ids of a val document" if shared
                  else f"no train document equals any of {len(val_hashes):,} val documents")
        first = load_shard(groups[split][0])
        check(f"{split}_starts_with_bos", first.size > 0 and int(first[0]) == BOS_ID,
              f"{groups[split][0].name} starts with token {int(first[0]) if first.size else None}")
        if sp is not None:
            ok = stats["max_token_id"] < sp.vocab_size()
            check(f"{split}_vocab", ok, f"max token id {stats['max_token_id']} vs tokenizer vocab "
                  f"{sp.vocab_size()}" + ("" if ok else ": shards made with another tokenizer"))
    return {"path": str(path), "tokenizer": str(tok_path) if tok_path else None,
            "vocab_size": sp.vocab_size() if sp is not None else None, "splits": splits,
            "checks": checks, "ok": all(c["ok"] for c in checks)}


def _check_manifest_tokenizer(folder: Path, tok_path: Path, check) -> None:
    try:
        recorded = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("tokenizer_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if recorded:
        digest = hashlib.sha256(tok_path.read_bytes()).hexdigest()
        check("manifest_tokenizer", digest == recorded,
              "tokenizer is the one manifest.json records" if digest == recorded else
              f"{tok_path} has SHA-256 {digest[:12]}..., manifest.json records {recorded[:12]}...")


def format_info(info: dict) -> str:
    lines = [f"shards: {info['path']}", f"tokenizer: {info.get('tokenizer')} (vocab {info.get('vocab_size')})"]
    for split, s in info["splits"].items():
        extra = (f", {s['bytes']:,} bytes, {s['bytes_per_token']} bytes/token "
                 f"({s['bytes_per_text_token']} without BOS)") if "bytes" in s else ""
        side = f", sidecar {s['sidecar_bytes']:,} bytes" if "sidecar_bytes" in s else ""
        lines.append(f"{split}: {s['shards']} shards, {s['tokens']:,} tokens, "
                     f"{s['documents']:,} documents{extra}{side}")
    lines += [f"[{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}" for c in info["checks"]]
    return "\n".join(lines)

