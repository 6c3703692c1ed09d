"""Batched per-document LoRA attached from outside the model, and the document chunk schedule for it.

Used by ttt.ttt_lora (record PR #1855, techniques.md 4e). Each site of eval.lora_targets
(eval/lora_targets.py: every nn.Linear by default, or PR #1855's q/k/v/o/mlp/head) gets a forward
hook adding scale * (x A_s^T) B_s^T, where s is the document slot of each batch row, so one forward
adapts a batch of documents with their own adapters and the model code is untouched; the LM-head
adapter is added to the logits before the cap (LoRA.nll / LoRA.logits). A looped block's module is
hooked once: its loop visits share one adapter, or (eval.lora_per_visit, PR #1855) each visit has
its own, picked by a per-forward call counter. The optimizer is Adam with beta1 = 0 and decoupled
weight decay, per slot. Documents are scored in chunks of eval.lora_chunk targets, or of a smaller
size for short documents (eval.lora_short_chunks, PR #2014: `chunk_lengths`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.data.tokenizer import BOS_ID
from loopgolf.eval.lora_targets import adapter_sites, count_visits


class LoRA:
    """Per-document adapters (batch row r uses slot slots[r]) on the sites of eval.lora_targets.

    Each hooked module i keeps `index[i]`: one flat adapter index (shared, the default), or one per
    visit (per_visit, PR #1855: a looped block's k-th run in a forward uses adapter k; the counters
    restart at every `active()`, which therefore holds exactly one forward: use nll() / logits())."""

    def __init__(self, model: nn.Module, slots: int, rank: int, alpha: float, device: torch.device,
                 eps: float = 1e-10, targets: str = "all", per_visit: bool = False):
        self.model, self.per_visit = model, per_visit
        sites = adapter_sites(model, targets)
        hooked = [s for s in sites if s.module is not None]
        visits = count_visits(model, [s.module for s in hooked], device) if per_visit else [1] * len(hooked)
        hooked, visits = [s for s, n in zip(hooked, visits) if n], [n for n in visits if n]
        self.sites = hooked + [s for s in sites if s.module is None]
        self.modules = [s.module for s in hooked]
        self.index: list[list[int]] = []
        dims: list[tuple[int, int]] = []
        for site, n in zip(hooked, visits):
            self.index.append(list(range(len(dims), len(dims) + n)))
            dims += [(site.in_features, site.out_features)] * n
        self.head = None
        if self.sites[-1].module is None:  # the LM head, computed in _head_logits
            self.head = len(dims)
            dims.append((self.sites[-1].in_features, self.sites[-1].out_features))
        self.scale, self.eps, self.rank = alpha / rank, eps, rank
        self.A = [torch.zeros(slots, rank, i, device=device) for i, _ in dims]
        self.B = [torch.zeros(slots, o, rank, device=device) for _, o in dims]
        self.tensors = self.A + self.B
        for t in self.tensors:
            t.requires_grad_(True)
        self.v = [torch.zeros_like(t) for t in self.tensors]
        self.steps = torch.zeros(slots, device=device)
        self._slots: torch.Tensor | None = None
        self._visits = [0] * len(self.modules)
        self.gen = torch.Generator(device=device)  # reseeded per batch by reset()
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]

    def _delta(self, j: int, x: torch.Tensor) -> torch.Tensor:
        a, b = self.A[j][self._slots].to(x.dtype), self.B[j][self._slots].to(x.dtype)
        return self.scale * torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), b)

    def _hook(self, i: int):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor):
            if self._slots is None:
                return None
            visit, idx = self._visits[i], self.index[i]
            self._visits[i] += 1
            if self.per_visit and visit >= len(idx):
                raise RuntimeError(f"LoRA TTT: {self.sites[i].name} ran {visit + 1} times in one forward; "
                                   f"count_visits found {len(idx)}: run one forward per active()")
            x = inp[0]
            if x.dim() != 3 or x.shape[0] != len(self._slots):
                raise ValueError(f"LoRA TTT: {type(mod).__name__} input {tuple(x.shape)} is not "
                                 f"(batch={len(self._slots)}, T, features); per-row adapters need it")
            return out + self._delta(idx[visit] if self.per_visit else idx[0], x).to(out.dtype)
        return hook

    def nll(self, x: torch.Tensor, y: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Per-token nats (B, T) of the adapted model, row r through the adapters of slots[r]."""
        with self.active(slots):
            if self.head is None:
                return self.model(x, y)
            logits = self._head_logits(x)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                   reduction="none").view(y.shape)

    def logits(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The adapted model's capped float32 logits (B, T, vocab)."""
        with self.active(slots):
            return self.model.logits(x) if self.head is None else self._head_logits(x)

    def _head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """cap(h W^T + scale (h A^T) B^T): PR #1855's lm_head_lora, added before the softcap."""
        h = self.model.hidden(x)
        z = F.linear(h, self.model.head_weight().to(h.dtype)).float() + self._delta(self.head, h).float()
        return self.model.logit_cap(z)

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
        self._slots, self._visits = slots, [0] * len(self.modules)
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


def chunk_lengths(spans: list[tuple[int, int]], chunk_len: int,
                  short: tuple[tuple[int, int], ...] = ()) -> list[int]:
    """Each document's chunk length: the first (max_tokens, chunk) of `short` (sorted by max_tokens,
    config_eval.parse_short_chunks) with max_tokens >= its length, else chunk_len. spans (s, e) as
    document_spans gives them; the length e - s + 1 counts its BOS and the next document's, as
    PR #2014's doc_len does (train_gpt.py L3254-3268, L3531-3541: TTT_SHORT_SCORE_FIRST_STEPS).
    #2014 picks one chunk per batch by its longest document, over batches of length-sorted
    documents; here batches keep stream order, so the rule applies per document."""
    return [next((c for limit, c in short if e - s + 1 <= limit), chunk_len) for s, e in spans]


def batched_document_chunks(spans: list[tuple[int, int]], tokens: np.ndarray, chunk_len: int | list[int],
                            context: int, device: torch.device) -> Iterator[DocStep]:
    """Step k scores chunk k of every document that has one, with up to `context` tokens of
    in-document context (the chunk's targets included). spans: (s, last) = targets s+1..last;
    chunk_len: one length for all, or one per document (chunk_lengths)."""
    lens = [chunk_len] * len(spans) if isinstance(chunk_len, int) else list(chunk_len)
    n_chunks = [math.ceil(max(0, e - s) / c) for (s, e), c in zip(spans, lens)]
    for k in range(max(n_chunks, default=0)):
        rows = [j for j, c in enumerate(n_chunks) if c > k]
        wins = []
        for j in rows:
            s, e = spans[j]
            lo = s + 1 + k * lens[j]
            hi = min(lo + lens[j], e + 1)
            wins.append((max(s, hi - 1 - context), lo, hi))
        x, y, mask, pos = pad_windows(tokens, wins, device)
        train = np.array([n_chunks[j] > k + 1 for j in rows])
        yield DocStep(x, y, mask, pos, torch.tensor(rows, device=device), torch.from_numpy(train).to(device),
                      [(lo, hi) for _, lo, hi in wins],
                      [(ws, hi) for (ws, _, hi), t in zip(wins, train) if t])
