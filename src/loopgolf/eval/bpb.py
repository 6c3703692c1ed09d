"""Exact validation bits per byte over scoring windows: the one implementation of the sums.

val_bpb = sum(nats) / (ln 2 * sum(bytes)), accumulated in float64 and all-reduced via dist. Windows
of `context` tokens advance by `stride`; the first window scores all its targets, each later one
only the targets not yet scored, so every target of the stream is scored exactly once
(techniques.md section 5). Plain eval is the case stride == context: the baseline's
non-overlapping seq_len windows over the stream truncated to ((N-1)//T)*T + 1 tokens
(techniques.md 2.4); every target counts, BOS targets included (they add loss and 0 bytes).

Bytes per target come from the ValSet (data/valset.py): the byte tables' counts, or the original
bytes of a transform's sidecar. Positions index the token stream: target position p is tokens[p]
predicted from tokens[:p]; the valid targets are 1..n-1. A non-finite score is never returned:
NonFiniteScoreError (a ValueError) names the phase instead.
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
from loopgolf.data.valset import ValSet


class NonFiniteScoreError(ValueError):
    """An evaluation produced a NaN or infinite loss; it is an error, never a result."""


def usable_tokens(n: int, seq_len: int, max_tokens: int = 0) -> int:
    if max_tokens > 0:
        n = min(n, max_tokens + 1)
    usable = ((n - 1) // seq_len) * seq_len + 1
    if usable < seq_len + 1:
        raise ValueError(f"validation set has {n} tokens; need at least seq_len+1 = {seq_len + 1}")
    return usable


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
    pos: torch.Tensor  # (B, T) int64 target position of each column
    nbytes: torch.Tensor  # (B, T) int64 bytes of each target
    mask: torch.Tensor  # (B, T) bool: the targets this batch scores
    ranges: list[tuple[int, int]]  # scored target positions


def iter_window_batches(vs: ValSet, plan: np.ndarray, context: int, batch_seqs: int,
                        device: torch.device) -> Iterator[WindowBatch]:
    """Batches of the windows in `plan` (in order); masked rows in row-major order are in stream order."""
    for i in range(0, len(plan), batch_seqs):
        rows = plan[i:i + batch_seqs]
        idx = rows[:, :1] + np.arange(context + 1)[None]
        chunk = torch.from_numpy(vs.tokens[idx].astype(np.int64)).to(device)
        pos = idx[:, 1:]
        mask = (pos >= rows[:, 1:2]) & (pos < rows[:, 2:3])
        yield WindowBatch(chunk[:, :-1], chunk[:, 1:], torch.from_numpy(pos).to(device),
                          torch.from_numpy(vs.target_bytes[pos]).to(device),
                          torch.from_numpy(mask).to(device), [(int(a), int(b)) for a, b in rows[:, 1:]])


def autocast_ctx(device: torch.device, enabled: bool = True):
    return (torch.autocast("cuda", dtype=torch.bfloat16)
            if enabled and device.type == "cuda" else nullcontext())


class ScoreSums:
    """float64 (nats, bytes, tokens) on one device, all-reduced once at the end."""

    def __init__(self, device: torch.device):
        self.t = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, nats: torch.Tensor, nbytes: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.to(torch.float64)
        self.t[0] += (nats.double() * m).sum()
        self.t[1] += (nbytes.double() * m).sum()
        self.t[2] += m.sum()

    def result(self, t0: float, phase: str = "eval") -> dict:
        dist.all_reduce_sum(self.t)
        nats, n_bytes, n_tok = (float(v) for v in self.t.tolist())
        res = {"val_loss": nats / max(n_tok, 1.0), "val_bpb": nats / (math.log(2) * max(n_bytes, 1.0)),
               "val_tokens": int(n_tok), "val_bytes": int(n_bytes),
               "eval_seconds": time.perf_counter() - t0}
        if not (math.isfinite(res["val_loss"]) and math.isfinite(res["val_bpb"])):
            raise NonFiniteScoreError(
                f"{phase}: the loss is not finite (val_loss={res['val_loss']}, {int(n_tok)} targets); "
                "the model diverged or produced NaN logits; a non-finite score is not a result")
        return res


def commit_record(log, pos: torch.Tensor, nats: torch.Tensor, dist_fn) -> None:
    """Hand the committed rows to the legality recorder if one is attached to `log`.

    dist_fn() -> (N, V) log-probabilities of the committed distributions at `pos`; it is only
    called when a checker listens, so normal runs pay nothing."""
    rec = getattr(log, "recorder", None) if log is not None else None
    if rec is not None:
        rec.commit(pos, dist_fn(), nats)


@torch.no_grad()
def score_windows(model: torch.nn.Module, batch: WindowBatch, sums: ScoreSums, log=None,
                  autocast: bool = True) -> torch.Tensor:
    """Score one batch under no_grad, commit it to `sums` and the log; returns per-token nats."""
    with autocast_ctx(batch.x.device, autocast):
        nats = model(batch.x, batch.y)
    sums.add(nats, batch.nbytes, batch.mask)
    if log is not None:
        log.score(batch.ranges)
        m = batch.mask

        def logp():
            with autocast_ctx(batch.x.device, autocast):
                return torch.log_softmax(model.logits(batch.x)[m].double(), -1)
        commit_record(log, batch.pos[m], nats[m], logp)
    return nats


def score_stream(model: torch.nn.Module, vs: ValSet, context: int, stride: int, batch_seqs: int,
                 device: torch.device, max_tokens: int = 0, log=None, autocast: bool = True,
                 phase: str = "sliding") -> dict:
    """Windowed val_loss / val_bpb; windows split into contiguous per-rank ranges."""
    t0 = time.perf_counter()
    n = usable_tokens(len(vs), context, max_tokens)
    plan = window_plan(n, context, stride)
    info = dist.info()
    lo, hi = rank_slice(len(plan), info.rank, info.world_size)
    sums = ScoreSums(device)
    was_training = model.training
    model.eval()
    for batch in iter_window_batches(vs, plan[lo:hi], context, batch_seqs, device):
        score_windows(model, batch, sums, log, autocast)
    model.train(was_training)
    res = sums.result(t0, phase)
    res.update(context=context, stride=stride, windows=len(plan), n_tokens=n)
    return res


def evaluate_bpb(model: torch.nn.Module, tokens: np.ndarray, luts, seq_len: int, batch_seqs: int,
                 device: torch.device, max_tokens: int = 0, autocast: bool = True,
                 byte_sidecar: np.ndarray | None = None) -> dict:
    """Plain eval of a raw token stream (windows of seq_len, stride seq_len); luts: ByteLUTs or
    ByteLUTs.to_torch. Prefer eval/recipe.evaluate with a ValSet (data/valset.load_val_set), which
    also honours a transform's byte sidecar; byte_sidecar here gives each token's original bytes."""
    vs = (ValSet.from_luts(tokens, luts) if byte_sidecar is None
          else ValSet.from_sidecar(tokens, byte_sidecar))
    res = score_stream(model, vs, seq_len, seq_len, batch_seqs, device, max_tokens, None, autocast,
                       phase="plain")
    for k in ("context", "stride", "windows", "n_tokens"):
        res.pop(k)
    return res
