"""Byte tables: how many UTF-8 bytes of the original text each predicted token stands for.

This module is the ONLY owner of byte counting in loopgolf: training logs, evaluation and
compressed-artifact scoring all turn nats per token into bits per byte through target_bytes()
(numpy) or TorchByteLUTs.count() (torch), which implement one rule. Do not re-derive it elsewhere.

The tables reproduce the challenge's `build_sentencepiece_luts` exactly:
  * control, unknown and unused pieces: 0 bytes, boundary, no leading space;
  * byte-fallback pieces (<0xNN>): 1 byte;
  * other pieces: UTF-8 length without a leading "\u2581", which is recorded as a leading space;
  * ids >= sp.vocab_size() (a model vocab padded above the tokenizer's): 0 bytes, boundary.
A target y after previous token x counts base_bytes[y] + (has_leading_space[y] and not
is_boundary[x]): the space of a piece right after BOS is not text, since decoding drops it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .tokenizer import SPACE_PIECE, TokenizerError

if TYPE_CHECKING:
    import torch  # imported lazily at run time, see ByteLUTs.to_torch


class TorchByteLUTs(NamedTuple):
    """The byte tables as torch tensors on one device (int64 base, bool lead, bool boundary)."""

    base_bytes: torch.Tensor
    has_leading_space: torch.Tensor
    is_boundary: torch.Tensor

    def count(self, prev: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Per-target byte counts (int64, shape of tgt); prev and tgt are id tensors of one shape."""
        # No bounds check here: it would force a device sync in the evaluation hot loop.
        return self.base_bytes[tgt] + (self.has_leading_space[tgt] & ~self.is_boundary[prev])


@dataclass(frozen=True, eq=False, repr=False)
class ByteLUTs:
    """The challenge's byte tables as read-only numpy arrays, one entry per model token id."""

    base_bytes: np.ndarray  # int16
    has_leading_space: np.ndarray  # bool
    is_boundary: np.ndarray  # bool

    def __post_init__(self) -> None:
        for name, dtype in (("base_bytes", np.int16), ("has_leading_space", np.bool_),
                            ("is_boundary", np.bool_)):
            arr = np.array(getattr(self, name), dtype=dtype)  # a private copy, then frozen
            if arr.ndim != 1:
                raise ValueError(f"ByteLUTs.{name} must be 1-D, got shape {arr.shape}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if not len(self.base_bytes) == len(self.has_leading_space) == len(self.is_boundary):
            raise ValueError("ByteLUTs tables must all have one entry per token id")

    def __len__(self) -> int:
        return len(self.base_bytes)

    def __repr__(self) -> str:
        return f"ByteLUTs(vocab_size={len(self)})"

    def to_torch(self, device="cpu") -> TorchByteLUTs:
        import torch  # keeps `import loopgolf.data` free of torch for the tokenizing workers

        return TorchByteLUTs(
            torch.tensor(self.base_bytes, dtype=torch.int64, device=device),
            torch.tensor(self.has_leading_space, dtype=torch.bool, device=device),
            torch.tensor(self.is_boundary, dtype=torch.bool, device=device),
        )


def build_byte_luts(sp, vocab_size: int) -> ByteLUTs:
    """Build the tables for a SentencePieceProcessor `sp` and a model vocab of vocab_size ids."""
    sp_size = int(sp.vocab_size())
    if vocab_size < sp_size:
        raise TokenizerError(
            f"tokenizer has {sp_size} pieces but model.vocab_size is {vocab_size}: set "
            f"model.vocab_size >= {sp_size} or use the tokenizer the model was trained with")
    base = np.zeros(vocab_size, dtype=np.int16)
    lead = np.zeros(vocab_size, dtype=np.bool_)
    boundary = np.ones(vocab_size, dtype=np.bool_)
    for i in range(sp_size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE_PIECE):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLUTs(base, lead, boundary)


def target_bytes(luts: ByteLUTs | TorchByteLUTs, prev_ids, target_ids):
    """Bytes of text each target token stands for, given the token before it.

    With ByteLUTs, ids are array-likes and the result is an int64 numpy array (ids are checked
    against the table size). With TorchByteLUTs, ids are tensors and this is luts.count().
    """
    if isinstance(luts, TorchByteLUTs):
        return luts.count(prev_ids, target_ids)
    prev = np.asarray(prev_ids)
    tgt = np.asarray(target_ids)
    if prev.shape != tgt.shape:
        raise ValueError(f"prev_ids shape {prev.shape} != target_ids shape {tgt.shape}")
    if tgt.size:
        lo = min(int(prev.min()), int(tgt.min()))
        hi = max(int(prev.max()), int(tgt.max()))
        if lo < 0 or hi >= len(luts):
            raise ValueError(
                f"token id {lo if lo < 0 else hi} is outside the byte tables (ids 0..{len(luts) - 1}); "
                "the tokens and the tokenizer/model vocab do not match")
    return (luts.base_bytes[tgt].astype(np.int64)
            + (luts.has_leading_space[tgt] & ~luts.is_boundary[prev]))
