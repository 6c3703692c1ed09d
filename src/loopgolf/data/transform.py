"""Lossless text transforms applied before tokenizing, and the per-token byte sidecar they need.

A transform (e.g. the CaseOps records' case operators, techniques.md 3.3) rewrites each document
into text that tokenizes better and maps back exactly. bpb must still count the ORIGINAL UTF-8
bytes, which the byte tables cannot know (an operator piece is 3 UTF-8 bytes but stands for 0), so
a sidecar shard stores, for every token, how many original bytes it stands for; evaluation sums it
instead of the tables (eval/bpb.py byte_sidecar). BOS counts 0. A character that byte fallback
splits over several tokens is counted on its first token, so sums over any token range that
starts at a character boundary are exact.

Sidecar shards use the shard format with the same name in a `bytes/` subfolder next to the token
shards, so a glob such as `*_val_*.bin` can never pick them up as tokens.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from .shards import ShardError, load_shard, read_header
from .tokenizer import SPACE_PIECE, TokenizerError

SIDECAR_DIR = "bytes"


class TextTransform(Protocol):
    """A bijective text rewrite; weights() gives each transformed character's original byte count."""

    name: str
    reserved: tuple[str, ...]  # operator symbols: train the tokenizer with them as user symbols

    def encode(self, text: str) -> str: ...

    def decode(self, text: str) -> str: ...

    def weights(self, text: str) -> list[int]: ...


# Private-use code points, as the CaseOps records use (their alias mapping); the logic is ours.
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
_OPS = frozenset((TITLE, ALLCAPS, CAPNEXT, ESC))


def _is_ascii_letter(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


class CaseTransform:
    """ASCII letter case as operators: "Hello"->TITLE+"hello", "NASA"->ALLCAPS+"nasa",
    "iPhone"->"i"+CAPNEXT+"phone"; a literal operator character is written ESC+char."""

    name = "case"
    reserved = (TITLE, ALLCAPS, CAPNEXT, ESC)

    def encode(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if not _is_ascii_letter(c):
                out.append(ESC + c if c in _OPS else c)
                i += 1
                continue
            j = i
            while j < n and _is_ascii_letter(text[j]):
                j += 1
            out.append(self._word(text[i:j]))
            i = j
        return "".join(out)

    @staticmethod
    def _word(w: str) -> str:
        if w.islower():
            return w
        if len(w) >= 2 and w.isupper():
            return ALLCAPS + w.lower()
        parts = [TITLE + w[0].lower() if w[0].isupper() else w[0]]
        parts += [CAPNEXT + c.lower() if c.isupper() else c for c in w[1:]]
        return "".join(parts)

    def decode(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == ESC and i + 1 < n:
                out.append(text[i + 1])
                i += 2
            elif c in (TITLE, CAPNEXT) and i + 1 < n:
                out.append(text[i + 1].upper())
                i += 2
            elif c == ALLCAPS:
                i += 1
                while i < n and _is_ascii_letter(text[i]):
                    out.append(text[i].upper())
                    i += 1
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def weights(self, text: str) -> list[int]:
        w: list[int] = []
        escaped = False
        for c in text:
            if escaped:
                w.append(len(c.encode("utf-8")))
                escaped = False
            elif c in _OPS:
                w.append(0)
                escaped = c == ESC
            else:
                w.append(len(c.encode("utf-8")))
        return w


class IdentityTransform:
    """No rewrite; its sidecar equals the byte tables' counts (a check of both)."""

    name = "identity"
    reserved: tuple[str, ...] = ()

    def encode(self, text: str) -> str:
        return text

    def decode(self, text: str) -> str:
        return text

    def weights(self, text: str) -> list[int]:
        return [len(c.encode("utf-8")) for c in text]


TRANSFORMS: dict[str, type] = {"case": CaseTransform, "identity": IdentityTransform}


def get_transform(name: str) -> TextTransform:
    try:
        return TRANSFORMS[name]()
    except KeyError:
        raise ValueError(f"unknown text transform {name!r}; choose one of {', '.join(TRANSFORMS)}") from None


def piece_bytes_table(sp) -> list[bytes]:
    """Per id, the UTF-8 bytes a piece decodes to ("\u2581" as a space; controls empty)."""
    table = []
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            table.append(b"")
        elif sp.is_byte(i):
            table.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))  # "<0xNN>"
        else:
            table.append(sp.id_to_piece(i).replace(SPACE_PIECE, " ").encode("utf-8"))
    return table


def token_byte_counts(ids: list[int], table: list[bytes], transform: TextTransform) -> np.ndarray:
    """Original bytes for each token of one document's [BOS] + ids (first entry, BOS, is 0)."""
    chunks = [table[t] for t in ids]
    if chunks and chunks[0].startswith(b" "):
        chunks[0] = chunks[0][1:]  # decoding drops the space of the first piece (no dummy prefix)
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError("pieces do not decode to valid UTF-8; the sidecar needs a tokenizer "
                             "whose byte-fallback pieces spell whole characters") from None
    char_w = np.asarray(transform.weights(text), dtype=np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)
    is_lead = (raw & 0xC0) != 0x80  # first byte of each character
    char_of = np.cumsum(is_lead) - 1
    n_bytes = np.diff(np.append(np.flatnonzero(is_lead), len(data)))
    # A character worth its own UTF-8 length counts 1 per byte, like the byte tables do for
    # byte-fallback pieces; any other weight (0 for operators) sits on its first byte.
    per_byte = (char_w == n_bytes)[char_of]
    byte_w = np.where(per_byte, 1, np.where(is_lead, char_w[char_of], 0)).astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(byte_w)))
    lens = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    ends = np.cumsum(lens)
    begins = ends - lens
    counts = np.zeros(len(ids) + 1, dtype=np.int64)  # [BOS] first
    counts[1:] = cum[ends] - cum[begins]
    return counts


def sidecar_path(shard: str | os.PathLike) -> Path:
    shard = Path(shard)
    return shard.parent / SIDECAR_DIR / shard.name


def load_byte_sidecar(shards: list[Path]) -> np.ndarray | None:
    """The concatenated sidecar of these token shards, or None if they have none; checked aligned."""
    paths = [sidecar_path(p) for p in shards]
    present = [p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = next(p for p, ok in zip(paths, present) if not ok)
        raise ShardError(f"{missing}: byte sidecar missing while other shards have one; re-tokenize")
    for shard, side in zip(shards, paths):
        if read_header(shard) != read_header(side):
            raise ShardError(f"{side}: sidecar length differs from {shard}; re-tokenize both")
    return np.concatenate([np.asarray(load_shard(p)) for p in paths])


def check_roundtrip(transform: TextTransform, texts: list[str]) -> list[str]:
    """Problems (empty = OK): texts the transform does not map back exactly, or mis-weights."""
    problems = []
    for i, t in enumerate(texts):
        enc = transform.encode(t)
        if transform.decode(enc) != t:
            problems.append(f"text {i} ({t[:40]!r}): {transform.name} transform is not lossless")
        elif sum(transform.weights(enc)) != len(t.encode("utf-8")):
            problems.append(f"text {i} ({t[:40]!r}): {transform.name} weights do not sum to its bytes")
    return problems

