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
weights are updated only after a global step of windows is scored, with all of the step's rows in
stream order (so the state is the same on any world size, and an update never reads a token that
is not yet scored: the rank-boundary leak of issue 16 finding 3), in float64. Every scoring and
update goes to the EventLog; a legality recorder receives every committed mixture distribution.
"""
from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice
from loopgolf.data.valset import ValSet
from loopgolf.eval.bpb import (ScoreSums, autocast_ctx, commit_record, iter_window_batches,
                               usable_tokens, window_plan)
from loopgolf.eval.events import EventLog
from loopgolf.eval.sliding import new_log


class Expert(Protocol):
    name: str

    def probs(self, prev1: torch.Tensor, prev2: torch.Tensor, net_logp: torch.Tensor) -> torch.Tensor:
        """(N, V) distribution of the next token given the two previous ones (-1 = none)."""

    def update(self, prev1: torch.Tensor, prev2: torch.Tensor, target: torch.Tensor) -> None:
        """Learn from already-scored (context, target) rows."""


class Network:
    name = "network"

    def probs(self, prev1, prev2, net_logp):
        return net_logp.double().exp()

    def update(self, prev1, prev2, target):
        pass


class Unigram:
    name = "unigram"

    def __init__(self, vocab: int, device: torch.device, alpha: float = 0.5):
        self.counts = torch.zeros(vocab, device=device)
        self.alpha, self.vocab = alpha, vocab

    def probs(self, prev1, prev2, net_logp):
        c = self.counts.double()  # float64: normalization is checked to 1e-6
        p = (c + self.alpha) / (c.sum() + self.alpha * self.vocab)
        return p.expand(len(prev1), -1)

    def update(self, prev1, prev2, target):
        self.counts.index_add_(0, target, torch.ones_like(target, dtype=self.counts.dtype))


class Bigram:
    name = "bigram"

    def __init__(self, vocab: int, device: torch.device, backoff: Unigram, k: float = 1.0):
        self.counts = torch.zeros(vocab, vocab, device=device)
        self.backoff, self.k = backoff, k

    def probs(self, prev1, prev2, net_logp):
        rows = self.counts[prev1.clamp(min=0)].double()
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
        rows = self.counts[self._bucket(prev1, prev2)].double()
        return (rows + self.k * self.backoff.probs(prev1, prev2, net_logp)) / (rows.sum(1, keepdim=True) + self.k)

    def update(self, prev1, prev2, target):
        self.counts.index_put_((self._bucket(prev1, prev2), target),
                               torch.ones_like(target, dtype=self.counts.dtype), accumulate=True)


def default_experts(vocab: int, device: torch.device, trigram_buckets: int = 4096) -> list:
    uni = Unigram(vocab, device)
    bi = Bigram(vocab, device, uni)
    return [Network(), uni, bi, HashedTrigram(vocab, device, bi, trigram_buckets)]


def _gather(rows: torch.Tensor) -> torch.Tensor:
    """All ranks' (N_r, C) rows concatenated in rank order (an all-gather built from all_reduce_sum)."""
    info = dist.info()
    if not info.enabled:
        return rows
    n = torch.tensor([len(rows)], device=rows.device)
    n_max = int(dist.all_reduce_max(n.clone()).item())
    buf = torch.zeros(info.world_size, n_max + 1, rows.shape[1], dtype=rows.dtype, device=rows.device)
    buf[info.rank, 0, 0] = len(rows)
    buf[info.rank, 1:len(rows) + 1] = rows
    dist.all_reduce_sum(buf)
    return torch.cat([buf[r, 1:int(buf[r, 0, 0]) + 1] for r in range(info.world_size)])


def evaluate_mixture(model: torch.nn.Module, vs: ValSet, context: int, stride: int,
                     batch_seqs: int, device: torch.device, experts: list | None = None,
                     prior: list[float] | None = None, eta: float = 1.0, max_tokens: int = 0,
                     trigram_buckets: int = 4096, log: EventLog | None = None) -> dict:
    """Score the mixture over sliding windows; returns the plain-eval keys plus final weights.

    batch_seqs is the number of windows per GLOBAL step: a step's windows are split over the
    ranks, scored with the state left by the previous steps, and then every rank updates with all
    of the step's rows, so the state (and the score) does not depend on the world size."""
    t0 = time.perf_counter()
    n = usable_tokens(len(vs), context, max_tokens)
    plan = window_plan(n, context, stride)
    info = dist.info()
    with torch.no_grad():  # the model's vocabulary, from its output (GPT or a GPT.at(plan) view)
        vocab = int(model.logits(torch.zeros(1, 1, dtype=torch.long, device=device)).shape[-1])
    experts = experts if experts is not None else default_experts(vocab, device, trigram_buckets)
    k = len(experts)
    prior_t = torch.tensor(prior if prior is not None else [0.97] + [0.03 / (k - 1)] * (k - 1),
                           dtype=torch.float64, device=device)
    cum_loss = torch.zeros(k, dtype=torch.float64, device=device)
    log = log if log is not None else new_log("mixture", n)
    sums = ScoreSums(device)
    tok = torch.from_numpy(vs.tokens[:n].astype(np.int64)).to(device)
    model.eval()
    for s in range(0, len(plan), batch_seqs):
        step = plan[s:s + batch_seqs]
        lo, hi = rank_slice(len(step), info.rank, info.world_size)
        rows = torch.zeros(0, 3 + k, dtype=torch.float64, device=device)
        for b in iter_window_batches(vs, step[lo:hi], context, hi - lo or 1, device):
            with torch.no_grad(), autocast_ctx(device):
                logits = model.logits(b.x)
            net_logp = torch.log_softmax(logits[b.mask].double(), dim=-1)
            pos = b.pos[b.mask]
            prev1, prev2, target = tok[pos - 1], torch.where(pos >= 2, tok[pos - 2], -1), tok[pos]
            w = torch.softmax(prior_t.log() - eta * cum_loss, 0)
            per = [e.probs(prev1, prev2, net_logp).double() for e in experts]
            mix = sum(wi * p for wi, p in zip(w, per))
            nats = -mix.gather(1, target[:, None]).squeeze(1).clamp_min(1e-300).log()
            sums.add(nats, b.nbytes[b.mask], torch.ones_like(nats, dtype=torch.bool))
            log.score(b.ranges)  # committed: everything below only updates state
            commit_record(log, pos, nats, lambda: mix.clamp_min(1e-300).log())
            inc = torch.stack([-p.gather(1, target[:, None]).squeeze(1).clamp_min(1e-300).log()
                               for p in per], 1)
            rows = torch.cat([torch.stack([prev1, prev2, target], 1).double(), inc], 1)
        # every rank sees the whole step's rows, in stream order: identical state on any world size
        all_rows = _gather(rows)
        cum_loss += all_rows[:, 3:].sum(0)
        idx = all_rows[:, :3].long()
        for e in experts:
            e.update(idx[:, 0], idx[:, 1], idx[:, 2])
        log.update([(int(step[lo, 0]), int(step[hi - 1, 2]))] if hi > lo else [])  # windows read
    res = sums.result(t0, "mixture")
    w = torch.softmax(prior_t.log() - eta * cum_loss, 0)
    res.update(context=context, stride=stride, n_tokens=n, experts=[e.name for e in experts],
               final_weights=[round(float(v), 6) for v in w])
    return res
