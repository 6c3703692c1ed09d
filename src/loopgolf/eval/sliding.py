"""Sliding-window evaluation: every target scored exactly once, each with up to `context` tokens before it.

The non-overlapping windows of eval/bpb.py give the first target of each window almost no context.
Here windows of `context` tokens advance by `stride`; the first window scores all its targets, each
later one only the targets not yet scored (its last `stride`, the last window whatever remains), so
every target of the stream is scored exactly once (techniques.md section 5, record (c) L1073-1144).
The stream is truncated as in eval/bpb.py (((N-1)//context)*context + 1 tokens), so with
stride == context the windows, targets and sums are exactly those of evaluate_bpb.

Positions index the token stream: target position p is tokens[p] predicted from tokens[:p]; the
valid targets are 1..n-1. ttt.py and mixture.py reuse the window plan and batch helpers below.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice
from loopgolf.eval.bpb import usable_tokens
from loopgolf.eval.events import EventLog


def window_plan(n: int, context: int, stride: int) -> np.ndarray:
    """(W, 3) int64 rows (start, score_lo, score_hi) over a stream of n tokens.

    Window w reads tokens[start : start+context+1] (inputs and targets) and scores target
    positions [score_lo, score_hi); the score ranges tile 1..n-1 exactly once, in order.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"sliding stride={stride} must be in 1..context={context}")
    if n < context + 1:
        raise ValueError(f"stream has {n} tokens; need at least context+1 = {context + 1}")
    ends = list(range(context + 1, n + 1, stride))
    if ends[-1] != n:
        ends.append(n)
    ends_a = np.asarray(ends, dtype=np.int64)
    lo = np.concatenate([[1], ends_a[:-1]])
    return np.stack([ends_a - context - 1, lo, ends_a], axis=1)


@dataclass
class WindowBatch:
    x: torch.Tensor  # (B, T) inputs
    y: torch.Tensor  # (B, T) targets
    mask: torch.Tensor  # (B, T) bool: the targets this batch scores
    ranges: list[tuple[int, int]]  # scored target positions


def iter_window_batches(tokens: np.ndarray, plan: np.ndarray, context: int, batch_seqs: int,
                        device: torch.device) -> Iterator[WindowBatch]:
    """Batches of the windows in `plan` (in order); masked rows in row-major order are in stream order."""
    offs = torch.arange(context)
    for i in range(0, len(plan), batch_seqs):
        rows = plan[i:i + batch_seqs]
        idx = rows[:, :1] + np.arange(context + 1)[None]
        chunk = torch.from_numpy(tokens[idx].astype(np.int64)).to(device)
        pos = torch.from_numpy(rows[:, :1] + 1) + offs[None]  # target position of each column
        mask = (pos >= torch.from_numpy(rows[:, 1:2])) & (pos < torch.from_numpy(rows[:, 2:3]))
        yield WindowBatch(chunk[:, :-1], chunk[:, 1:], mask.to(device),
                          [(int(a), int(b)) for a, b in rows[:, 1:]])


def autocast_ctx(device: torch.device, enabled: bool = True):
    return (torch.autocast("cuda", dtype=torch.bfloat16)
            if enabled and device.type == "cuda" else nullcontext())


class ScoreSums:
    """float64 (nats, bytes, tokens) on one device, all-reduced once at the end."""

    def __init__(self, device: torch.device):
        self.t = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, nats: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, luts) -> None:
        m = mask.to(torch.float64)
        self.t[0] += (nats.double() * m).sum()
        self.t[1] += (luts.count(x, y).double() * m).sum()
        self.t[2] += m.sum()

    def result(self, t0: float) -> dict:
        dist.all_reduce_sum(self.t)
        nats, n_bytes, n_tok = (float(v) for v in self.t.tolist())
        return {"val_loss": nats / max(n_tok, 1.0), "val_bpb": nats / (math.log(2) * max(n_bytes, 1.0)),
                "val_tokens": int(n_tok), "val_bytes": int(n_bytes),
                "eval_seconds": time.perf_counter() - t0}


@torch.no_grad()
def score_windows(model: torch.nn.Module, batch: WindowBatch, luts, sums: ScoreSums,
                  log: EventLog | None, autocast: bool = True) -> torch.Tensor:
    """Score one batch under no_grad, commit it to `sums` and the log; returns per-token nats."""
    with autocast_ctx(batch.x.device, autocast):
        nats = model(batch.x, batch.y)
    sums.add(nats, batch.x, batch.y, batch.mask, luts)
    if log is not None:
        log.score(batch.ranges)
    return nats


def evaluate_sliding(model: torch.nn.Module, tokens: np.ndarray, luts, context: int, stride: int,
                     batch_seqs: int, device: torch.device, max_tokens: int = 0,
                     log: EventLog | None = None, autocast: bool = True) -> dict:
    """Sliding-window val_loss / val_bpb; windows split into contiguous per-rank ranges."""
    t0 = time.perf_counter()
    n = usable_tokens(len(tokens), context, max_tokens)
    plan = window_plan(n, context, stride)
    info = dist.info()
    lo, hi = rank_slice(len(plan), info.rank, info.world_size)
    sums = ScoreSums(device)
    was_training = model.training
    model.eval()
    for batch in iter_window_batches(tokens, plan[lo:hi], context, batch_seqs, device):
        score_windows(model, batch, luts, sums, log, autocast)
    model.train(was_training)
    res = sums.result(t0)
    res.update(context=context, stride=stride, windows=len(plan), n_tokens=n)
    return res


def new_log(phase: str, n: int) -> EventLog:
    """An event log for this rank over a usable stream of n tokens."""
    return EventLog(phase=phase, n_tokens=n, rank=dist.info().rank)
