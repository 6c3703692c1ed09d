"""A normalized online mixture of the network with n-gram experts: the legal form of the "hedge mixer".

PR #1453's hedge mixer (techniques.md 4f) blended the network with n-gram counts and an "entropy"
expert that gave every token the same value, so its mixture was not a distribution (issue #1017
condition C2; RFC PR #886). Here every expert is a full distribution over the vocabulary:
  unigram   p(c)      = (n(c) + a) / (N + a V)                         (add-a)
  bigram    p(c|b)    = (n(b,c) + k p_uni(c)) / (n(b) + k)             (backs off to the unigram)
  trigram   p(c|a,b)  = (n(h(a,b),c) + k p_bi(c|b)) / (n(h(a,b)) + k)  (hashed context, full-vocab rows)
and the mixture is linear, p = sum_k w_k p_k with sum_k w_k = 1, so it sums to 1 whatever the
weights. Weights are Bayesian/Hedge: w_k ∝ prior_k exp(-eta L_k), L_k the expert's cumulative loss
(eta = 1 is Bayesian model averaging). Positions are scored in sliding-window order; counts and
weights are updated only after a batch is scored, with every rank's batch (lock-step), and every
scoring and update goes to the EventLog. `snapshots` keeps the full mixture distribution at sampled
positions so lab/legality.py can check normalization on exactly what was scored.
"""
from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice
from loopgolf.eval.bpb import usable_tokens
from loopgolf.eval.events import EventLog
from loopgolf.eval.sliding import ScoreSums, autocast_ctx, iter_window_batches, new_log, window_plan


class Expert(Protocol):
    name: str

    def probs(self, prev1: torch.Tensor, prev2: torch.Tensor, net_logp: torch.Tensor) -> torch.Tensor:
        """(N, V) distribution of the next token given the two previous ones (-1 = none)."""

    def update(self, prev1: torch.Tensor, prev2: torch.Tensor, target: torch.Tensor) -> None:
        """Learn from already-scored (context, target) rows."""


class Network:
    name = "network"

    def probs(self, prev1, prev2, net_logp):
        return net_logp.exp()

    def update(self, prev1, prev2, target):
        pass


class Unigram:
    name = "unigram"

    def __init__(self, vocab: int, device: torch.device, alpha: float = 0.5):
        self.counts = torch.zeros(vocab, device=device)
        self.alpha, self.vocab = alpha, vocab

    def probs(self, prev1, prev2, net_logp):
        p = (self.counts + self.alpha) / (self.counts.sum() + self.alpha * self.vocab)
        return p.expand(len(prev1), -1)

    def update(self, prev1, prev2, target):
        self.counts.index_add_(0, target, torch.ones_like(target, dtype=self.counts.dtype))


class Bigram:
    name = "bigram"

    def __init__(self, vocab: int, device: torch.device, backoff: Unigram, k: float = 1.0):
        self.counts = torch.zeros(vocab, vocab, device=device)
        self.backoff, self.k = backoff, k

    def probs(self, prev1, prev2, net_logp):
        rows = self.counts[prev1.clamp(min=0)]
        return (rows + self.k * self.backoff.probs(prev1, prev2, net_logp)) / (rows.sum(1, keepdim=True) + self.k)

    def update(self, prev1, prev2, target):
        ok = prev1 >= 0
        self.counts.index_put_((prev1[ok], target[ok]), torch.ones_like(target[ok], dtype=self.counts.dtype),
                               accumulate=True)


class HashedTrigram:
    name = "trigram"

    def __init__(self, vocab: int, device: torch.device, backoff: Bigram, buckets: int = 4096,
                 k: float = 1.0):
        self.counts = torch.zeros(buckets, vocab, device=device)
        self.backoff, self.k, self.buckets = backoff, k, buckets

    def _bucket(self, prev1, prev2):
        return ((prev2 + 1) * 1_000_003 + (prev1 + 1) * 8_191) % self.buckets

    def probs(self, prev1, prev2, net_logp):
        rows = self.counts[self._bucket(prev1, prev2)]
        return (rows + self.k * self.backoff.probs(prev1, prev2, net_logp)) / (rows.sum(1, keepdim=True) + self.k)

    def update(self, prev1, prev2, target):
        self.counts.index_put_((self._bucket(prev1, prev2), target),
                               torch.ones_like(target, dtype=self.counts.dtype), accumulate=True)


def default_experts(vocab: int, device: torch.device, trigram_buckets: int = 4096) -> list:
    uni = Unigram(vocab, device)
    bi = Bigram(vocab, device, uni)
    return [Network(), uni, bi, HashedTrigram(vocab, device, bi, trigram_buckets)]


def _gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """All ranks' (N_r, 3) int64 rows, concatenated (an all-gather built from all_reduce_sum)."""
    info = dist.info()
    if not info.enabled:
        return rows
    n = torch.tensor([len(rows)], device=rows.device)
    n_max = int(dist.all_reduce_max(n.clone()).item())
    buf = torch.zeros(info.world_size, n_max + 1, 3, dtype=torch.int64, device=rows.device)
    buf[info.rank, 0, 0] = len(rows)
    buf[info.rank, 1:len(rows) + 1] = rows
    dist.all_reduce_sum(buf)
    return torch.cat([buf[r, 1:int(buf[r, 0, 0]) + 1] for r in range(info.world_size)])


def evaluate_mixture(model: torch.nn.Module, tokens: np.ndarray, luts, context: int, stride: int,
                     batch_seqs: int, device: torch.device, experts: list | None = None,
                     prior: list[float] | None = None, eta: float = 1.0, max_tokens: int = 0,
                     sample_positions: int = 32, log: EventLog | None = None) -> dict:
    """Score the mixture over sliding windows; returns the evaluate_bpb keys plus final weights
    and `snapshots` {position: (mixture distribution (V,) float64 cpu, target, committed nats)}."""
    t0 = time.perf_counter()
    n = usable_tokens(len(tokens), context, max_tokens)
    plan = window_plan(n, context, stride)
    info = dist.info()
    lo, hi = rank_slice(len(plan), info.rank, info.world_size)
    vocab = int(model.cfg.vocab_size) if hasattr(model, "cfg") else len(luts.base_bytes)
    experts = experts if experts is not None else default_experts(vocab, device)
    k = len(experts)
    prior_t = torch.tensor(prior if prior is not None else [0.97] + [0.03 / (k - 1)] * (k - 1),
                           dtype=torch.float64, device=device)
    cum_loss = torch.zeros(k, dtype=torch.float64, device=device)
    log = log if log is not None else new_log("mixture", n)
    sample = set(np.linspace(1, n - 1, sample_positions).astype(np.int64).tolist()) if sample_positions else set()
    snapshots: dict[int, tuple] = {}
    sums = ScoreSums(device)
    tok = torch.from_numpy(tokens[:n].astype(np.int64)).to(device)
    batches = iter_window_batches(tokens, plan[lo:hi], context, batch_seqs, device)
    n_mine = math.ceil((hi - lo) / batch_seqs)
    n_steps = int(dist.all_reduce_max(torch.tensor([n_mine], device=device)).item())
    model.eval()
    for s in range(n_steps):
        rows = torch.zeros(0, 3, dtype=torch.int64, device=device)
        inc = torch.zeros(k, dtype=torch.float64, device=device)
        ranges: list[tuple[int, int]] = []
        if s < n_mine:
            b = next(batches)
            ranges = b.ranges
            with torch.no_grad(), autocast_ctx(device):
                logits = model.logits(b.x)
            net_logp = torch.log_softmax(logits[b.mask].float(), dim=-1)
            pos = torch.cat([torch.arange(a, z, device=device) for a, z in b.ranges])
            prev1, prev2, target = tok[pos - 1], torch.where(pos >= 2, tok[pos - 2], -1), tok[pos]
            w = torch.softmax(prior_t.log() - eta * cum_loss, 0).float()
            per = [e.probs(prev1, prev2, net_logp) for e in experts]
            mix = sum(wi * p for wi, p in zip(w, per))
            nats = -mix.gather(1, target[:, None]).squeeze(1).clamp_min(1e-30).log()
            sums.add(nats, b.x[b.mask], b.y[b.mask], torch.ones_like(nats, dtype=torch.bool), luts)
            log.score(b.ranges)  # committed: everything below only updates state
            for i in (sample & set(range(b.ranges[0][0], b.ranges[-1][1]))):
                j = int((pos == i).nonzero()[0, 0])
                snapshots[i] = (mix[j].double().cpu(), int(target[j]), float(nats[j]))
            inc = torch.stack([-p.gather(1, target[:, None]).clamp_min(1e-30).log().sum()
                               for p in per]).double()
            rows = torch.stack([prev1, prev2, target], 1)
        cum_loss += dist.all_reduce_sum(inc)
        all_rows = _gather_rows(rows)
        for e in experts:
            e.update(all_rows[:, 0], all_rows[:, 1], all_rows[:, 2])
        log.update(ranges)
    res = sums.result(t0)
    w = torch.softmax(prior_t.log() - eta * cum_loss, 0)
    res.update(context=context, stride=stride, n_tokens=n, experts=[e.name for e in experts],
               final_weights=[round(float(v), 6) for v in w], snapshots=snapshots)
    return res
