"""The validation set as scored: token stream plus the original UTF-8 bytes each target stands for.

Every evaluator (plain, sliding, TTT, mixture) reads its tokens and its per-target byte counts from
one ValSet, so bits per byte are counted one way everywhere: from the byte tables (data/luts.py) or,
for text-transformed shards (data/transform.py, e.g. the case operators), from the byte sidecar,
which holds the ORIGINAL bytes (an operator piece is 3 UTF-8 bytes but stands for 0; counting the
tables' bytes for such shards over-counted bytes by 8.4 % on bench documents, issue 16 finding 1).

load_val_set refuses inputs that would give a wrong score with exit 0:
  * a tokenizer whose SHA-256 differs from the shards' manifest.json `tokenizer_sha256` (a vocab-400
    shard set scored with the 1024 tokenizer passes the id-range check but reports a wrong bpb);
  * transformed shards without their sidecar (manifest `transform` set, or a tokenizer reserving
    the transform's operator pieces);
  * token ids outside the tokenizer's vocabulary.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .luts import ByteLUTs, build_byte_luts
from .shards import ShardError, check_vocab, list_shards, load_shard
from .tokenizer import TokenizerError, load_tokenizer
from .transform import TRANSFORMS, load_byte_sidecar, sidecar_path


@dataclass(frozen=True, eq=False)
class ValSet:
    """tokens[p] is predicted from tokens[:p]; target_bytes[p] is the bytes it stands for (p >= 1)."""

    tokens: np.ndarray  # (N,) uint16
    target_bytes: np.ndarray  # (N,) int64; entry 0 is 0 (token 0 is never a target)
    bytes_source: str = "tables"  # tables | sidecar
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.target_bytes):
            raise ValueError(f"ValSet: {len(self.target_bytes)} byte counts for {len(self.tokens)} "
                             "tokens; load the sidecar of the same shards")
        if len(self.tokens) < 2:
            raise ValueError(f"ValSet {self.source or ''}: {len(self.tokens)} tokens; need at least 2")

    def __len__(self) -> int:
        return len(self.tokens)

    def with_tokens(self, tokens: np.ndarray) -> "ValSet":
        """The same byte counts over other tokens of the same length (legality perturbations)."""
        return ValSet(np.asarray(tokens, dtype=np.uint16), self.target_bytes, self.bytes_source,
                      self.source + " (perturbed)")

    def head(self, n: int) -> "ValSet":
        """The first n tokens (a slice for quick checks)."""
        n = min(n, len(self))
        return ValSet(self.tokens[:n], self.target_bytes[:n], self.bytes_source, self.source)

    @classmethod
    def from_luts(cls, tokens: np.ndarray, luts, source: str = "") -> "ValSet":
        """Byte counts from byte tables: ByteLUTs, or TorchByteLUTs (as the old evaluators took)."""
        return cls(np.asarray(tokens), table_bytes(np.asarray(tokens), luts), "tables", source)

    @classmethod
    def from_sidecar(cls, tokens: np.ndarray, sidecar: np.ndarray, source: str = "") -> "ValSet":
        side = np.asarray(sidecar).astype(np.int64)
        if len(side) != len(tokens):
            raise ValueError(f"byte sidecar has {len(side)} entries for {len(tokens)} tokens; load "
                             "the sidecar of the same shards (data.transform.load_byte_sidecar)")
        side = side.copy()
        side[0] = 0
        return cls(np.asarray(tokens), side, "sidecar", source)


def table_bytes(tokens: np.ndarray, luts) -> np.ndarray:
    """(N,) int64: bytes of each target from the tables; entry 0 (no previous token) is 0."""
    if not isinstance(luts, ByteLUTs):  # TorchByteLUTs
        luts = ByteLUTs(luts.base_bytes.cpu().numpy().astype(np.int16),
                        luts.has_leading_space.cpu().numpy(), luts.is_boundary.cpu().numpy())
    tok = np.asarray(tokens).astype(np.int64)
    if len(tok) and int(tok.max()) >= len(luts):
        raise ValueError(f"token id {int(tok.max())} is outside the byte tables (ids 0..{len(luts) - 1}); "
                         "the tokens and the tokenizer/model vocab do not match")
    out = np.zeros(len(tok), dtype=np.int64)
    prev, tgt = tok[:-1], tok[1:]
    out[1:] = luts.base_bytes[tgt].astype(np.int64) + (luts.has_leading_space[tgt] & ~luts.is_boundary[prev])
    return out


def _manifests(shard_paths: list[Path]) -> list[tuple[Path, dict]]:
    out = []
    for folder in sorted({Path(p).resolve().parent for p in shard_paths}):
        f = folder / "manifest.json"
        if f.is_file():
            try:
                out.append((f, json.loads(f.read_text(encoding="utf-8"))))
            except ValueError as e:
                raise ShardError(f"{f}: not valid JSON ({e}); restore it or re-run `loopgolf data "
                                 "prepare`") from None
    return out


def check_tokenizer(shard_paths: list[str | os.PathLike], tokenizer: str | os.PathLike) -> None:
    """TokenizerError if the shards' manifest.json records another tokenizer (SHA-256)."""
    digest = hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()
    for f, m in _manifests([Path(p) for p in shard_paths]):
        recorded = m.get("tokenizer_sha256") if isinstance(m, dict) else None
        if recorded and str(recorded).lower() != digest:
            raise TokenizerError(
                f"{tokenizer}: SHA-256 {digest[:12]}... but {f} records tokenizer_sha256 "
                f"{str(recorded)[:12]}... ({m.get('tokenizer', '?')}); these shards were made with "
                "another tokenizer: pass that one (data.tokenizer / --tokenizer)")


def _transformed(shard_paths: list[Path], sp) -> str | None:
    """Why these shards look text-transformed (so they need a sidecar), or None."""
    for f, m in _manifests(shard_paths):
        t = m.get("transform") if isinstance(m, dict) else None
        if t and t != "identity":
            return f"{f} records transform {t!r}"
    for name, cls in TRANSFORMS.items():
        for sym in cls.reserved:
            pid = sp.piece_to_id(sym)
            if pid != sp.unk_id() and sp.id_to_piece(pid) == sym:
                return f"the tokenizer reserves the {name!r} transform's operator {sym!r}"
    return None


def load_val_set(pattern: str, tokenizer: str | os.PathLike, vocab_size: int) -> ValSet:
    """The validation shards matching `pattern`, checked against `tokenizer`, with byte counts."""
    paths = list_shards(pattern)
    check_tokenizer(paths, tokenizer)
    sp = load_tokenizer(tokenizer)
    check_vocab(paths, sp.get_piece_size())
    parts = [np.asarray(load_shard(p)) for p in paths]
    tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
    sidecar = load_byte_sidecar(paths)
    if sidecar is not None:
        return ValSet.from_sidecar(tokens, sidecar, pattern)
    why = _transformed(paths, sp)
    if why:
        raise ShardError(f"{paths[0]}: {why}, but the byte sidecar {sidecar_path(paths[0])} is "
                         "missing; bpb must count the original bytes: re-tokenize with the "
                         "transform (it writes the sidecar) or copy the bytes/ folder")
    return ValSet.from_luts(tokens, build_byte_luts(sp, vocab_size), pattern)
