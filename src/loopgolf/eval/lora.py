"""Batched per-document LoRA attached from outside the model, and the document chunk schedule for it.

Used by ttt.ttt_lora (record PR #1855, techniques.md 4e). Each nn.Linear of the model gets a forward
hook adding scale * (x A_s^T) B_s^T, where s is the document slot of each batch row, so one forward
adapts a batch of documents with their own adapters and the model code is untouched. A looped
block's Linear is hooked once, so its loop visits share one adapter (PR #1855 keeps one per
virtual slot). The optimizer is Adam with beta1 = 0 and decoupled weight decay, per slot.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from loopgolf.data.tokenizer import BOS_ID


class LoRA:
    def __init__(self, model: nn.Module, slots: int, rank: int, alpha: float, device: torch.device,
                 eps: float = 1e-10):
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not self.linears:
            raise ValueError("LoRA TTT: the model has no nn.Linear layers to adapt")
        self.scale, self.eps, self.rank = alpha / rank, eps, rank
        self.A = [torch.zeros(slots, rank, m.in_features, device=device) for m in self.linears]
        self.B = [torch.zeros(slots, m.out_features, rank, device=device) for m in self.linears]
        self.tensors = self.A + self.B
        for t in self.tensors:
            t.requires_grad_(True)
        self.v = [torch.zeros_like(t) for t in self.tensors]
        self.steps = torch.zeros(slots, device=device)
        self._slots: torch.Tensor | None = None
        self.gen = torch.Generator(device=device)  # reseeded per batch by reset()
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.linears)]

    def _hook(self, i: int):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor):
            if self._slots is None:
                return None
            x = inp[0]
            if x.dim() != 3 or x.shape[0] != len(self._slots):
                raise ValueError(f"LoRA TTT: {type(mod).__name__} input {tuple(x.shape)} is not "
                                 f"(batch={len(self._slots)}, T, features); per-row adapters need it")
            a, b = self.A[i][self._slots].to(x.dtype), self.B[i][self._slots].to(x.dtype)
            delta = torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), b)
            return out + (self.scale * delta).to(out.dtype)
        return hook

    @torch.no_grad()
    def reset(self, batch_index: int, keep_a: bool = False) -> None:
        """Fresh adapters for a new batch of documents: B = 0 (identity), A uniform(+-1/sqrt(in))
        drawn from a generator seeded by the batch's global index (the same on any world size)."""
        self.gen.manual_seed(batch_index)
        for a in self.A:
            if not keep_a:
                a.uniform_(-1.0, 1.0, generator=self.gen).mul_(1.0 / math.sqrt(a.shape[-1]))
        for b in self.B:
            b.zero_()
        for v in self.v:
            v.zero_()
        self.steps.zero_()
        self.clear_grads()

    @contextlib.contextmanager
    def active(self, slots: torch.Tensor):
        self._slots = slots
        try:
            yield
        finally:
            self._slots = None

    @torch.no_grad()
    def adam_step(self, slots: torch.Tensor, lr: float, beta2: float, weight_decay: float) -> None:
        """Adam (beta1 = 0) with decoupled weight decay on the adapters of `slots` only."""
        self.steps[slots] += 1
        for t, v in zip(self.tensors, self.v):
            g = t.grad[slots] if t.grad is not None else torch.zeros_like(t[slots])
            v[slots] = beta2 * v[slots] + (1 - beta2) * g.square()
            corr = (1 - beta2 ** self.steps[slots]).view(-1, *([1] * (t.dim() - 1)))
            upd = g / ((v[slots] / corr).sqrt() + self.eps)
            t[slots] = t[slots] * (1 - lr * weight_decay) - lr * upd
        self.clear_grads()

    def clear_grads(self) -> None:
        for t in self.tensors:
            t.grad = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def document_spans(tokens: np.ndarray) -> list[tuple[int, int]]:
    """(s, e) per document: tokens[s] is its BOS (or the stream start), its targets are positions
    s+1..e, where e is the next document's BOS or the last token; the spans tile 1..n-1 once."""
    n = len(tokens)
    starts = [0] + [int(i) for i in np.flatnonzero(tokens[1:n - 1] == BOS_ID) + 1]
    ends = starts[1:] + [n - 1]
    return list(zip(starts, ends))


@dataclass
class DocStep:
    x: torch.Tensor  # (B, T) right-padded inputs
    y: torch.Tensor
    mask: torch.Tensor  # (B, T) bool: this step's scored targets
    pos: torch.Tensor  # (B, T) int64 target position of each column (0 in the padding)
    slots: torch.Tensor  # (B,) adapter slot (document index within the batch) per row
    train_rows: torch.Tensor  # (B,) bool: rows whose chunk is not their document's last
    scored: list[tuple[int, int]]
    seen: list[tuple[int, int]]  # tokens read by the rows that are trained on


def pad_windows(tokens: np.ndarray, wins: list[tuple[int, int, int]], device: torch.device):
    """Right-padded (x, y, mask, pos) for windows (ws, lo, hi): inputs tokens[ws:hi-1], targets
    tokens[ws+1:hi] (at positions pos), of which positions [lo, hi) are scored."""
    width = max(hi - 1 - ws for ws, _, hi in wins)
    x = np.zeros((len(wins), width), dtype=np.int64)
    y = np.zeros((len(wins), width), dtype=np.int64)
    mask = np.zeros((len(wins), width), dtype=np.bool_)
    pos = np.zeros((len(wins), width), dtype=np.int64)
    for r, (ws, lo, hi) in enumerate(wins):
        t = hi - 1 - ws
        x[r, :t] = tokens[ws:hi - 1]
        y[r, :t] = tokens[ws + 1:hi]
        mask[r, lo - ws - 1:t] = True
        pos[r, :t] = np.arange(ws + 1, hi)
    return tuple(torch.from_numpy(a).to(device) for a in (x, y, mask, pos))


def batched_document_chunks(spans: list[tuple[int, int]], tokens: np.ndarray, chunk_len: int,
                            context: int, device: torch.device) -> Iterator[DocStep]:
    """Step k scores chunk k of every document that has one, with up to `context` tokens of
    in-document context (the chunk's targets included). spans: (s, last) = targets s+1..last."""
    n_chunks = [math.ceil(max(0, e - s) / chunk_len) for s, e in spans]
    for k in range(max(n_chunks, default=0)):
        rows = [j for j, c in enumerate(n_chunks) if c > k]
        wins = []
        for j in rows:
            s, e = spans[j]
            lo = s + 1 + k * chunk_len
            hi = min(lo + chunk_len, e + 1)
            wins.append((max(s, hi - 1 - context), lo, hi))
        x, y, mask, pos = pad_windows(tokens, wins, device)
        train = np.array([n_chunks[j] > k + 1 for j in rows])
        yield DocStep(x, y, mask, pos, torch.tensor(rows, device=device), torch.from_numpy(train).to(device),
                      [(lo, hi) for _, lo, hi in wins],
                      [(ws, hi) for (ws, _, hi), t in zip(wins, train) if t])
