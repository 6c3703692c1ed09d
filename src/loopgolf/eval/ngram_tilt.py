"""The token-only n-gram tilt (PR #2130 -> #2135, from PR #1145): a causal, normalized boost of one token.

For every target position p, an online n-gram expert looks at the L = order - 1 tokens before p
(the exact context tokens[p-L:p], hashed to 64 bits) and, over the earlier positions p' < p with the
same context, counts how often each next token followed (#2135 online_ngram_state.c: `total`,
`top_count`, `top_tok`; the top token changes only when another token's count passes it). If that
context was seen and top_count / total >= threshold, the hint h_p = top_tok gates a tilt of the
network's distribution q (#2135 online_ngram_tilt.py, TOKEN_ORDER=16, TOKEN_THRESHOLD=0.8,
TOKEN_BOOST=2.625; the within-word and word-start channels are off there and absent here):

    p(a) = q(a) exp(beta [a = h_p]) / Z_p,    Z_p = 1 + q(h_p) (exp(beta) - 1)
    -log p(y) = -log q(y) - beta [y = h_p] + log1p(q(h_p) (exp(beta) - 1))

so p sums to 1 over the vocabulary at every position (unlike the n-gram caches of #886, "sums to
~277"), and ungated positions keep q. The hint at p is a function of tokens[:p] alone (counts of
earlier positions' contexts and next tokens), so it is part of the prediction's context exactly as
the network's window is: it is computed for the whole stream in one vectorized left-to-right pass
(as #2135 precomputes its hints, inside the eval timer here too), the windows are then scored in
sliding order, and no state update reads a target before it is scored (the event log records only
scores). lab/legality.check_behaviour certifies both properties by behaviour: normalization at
every committed position, and committed distributions unchanged when tokens[q:] are replaced.
Deviation: #2135 tilts its TTT-adapted logits; here the tilt sits on sliding-window scoring of the
shipped model (eval.method=ngram_tilt).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice
from loopgolf.data.valset import ValSet
from loopgolf.eval.bpb import (ScoreSums, autocast_ctx, commit_record, iter_window_batches,
                               usable_tokens, window_plan)
from loopgolf.eval.events import EventLog
from loopgolf.eval.sliding import new_log

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial context hash


def context_keys(tokens: np.ndarray, length: int) -> np.ndarray:
    """uint64 hash of tokens[p-length:p] for p = length..n-1 (entry i is position length + i)."""
    t = tokens.astype(np.uint64) + np.uint64(1)
    n = len(t)
    h = np.zeros(max(n - length, 0), dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the hash
        for j in range(length):
            h = h * _MULT + t[j:n - length + j]
    return h


def tilt_hints(tokens: np.ndarray, order: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(hint, gate), int64 and bool per position of `tokens`: the top next token of the position's
    context among earlier positions, and whether its share of them is >= threshold (module
    docstring). Exact counts, vectorized: stable sorts by context (and by context and token) give
    each position its count of earlier same-context positions and the running top token."""
    n, length = len(tokens), order - 1
    hint, gate = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if n <= length:
        return hint, gate
    key = context_keys(tokens, length)
    tok = tokens[length:].astype(np.int64)
    m = len(key)
    by_ctx = np.argsort(key, kind="stable")  # positions of one context stay in stream order
    ks, ts = key[by_ctx], tok[by_ctx]
    new_ctx = np.ones(m, dtype=bool)
    new_ctx[1:] = ks[1:] != ks[:-1]
    group = np.cumsum(new_ctx) - 1
    start = np.flatnonzero(new_ctx)[group]  # index of the context's first position
    # c: how often (context, token) occurred up to and including this position
    by_pair = np.lexsort((np.arange(m), tok, key))
    kp, tp = key[by_pair], tok[by_pair]
    new_pair = np.ones(m, dtype=bool)
    new_pair[1:] = (kp[1:] != kp[:-1]) | (tp[1:] != tp[:-1])
    pair_start = np.maximum.accumulate(np.where(new_pair, np.arange(m), 0))
    c = np.empty(m, dtype=np.int64)
    c[by_pair] = np.arange(m) - pair_start + 1
    cs = c[by_ctx]
    offset = group * (m + 1)  # per-context running maximum through one global accumulate
    best = np.maximum.accumulate(cs + offset) - offset  # top count including this position
    best_before = np.where(new_ctx, 0, np.roll(best, 1))
    raised = cs > best_before  # the top token changes here (strictly more, as #2135's C code)
    last = np.maximum.accumulate(np.where(raised, np.arange(m), -1))
    top_before = np.where(new_ctx, 0, ts[np.roll(last, 1)])
    seen = np.arange(m) - start  # earlier positions with this context
    share = np.divide(best_before, seen, out=np.zeros(m), where=seen > 0)
    hint[length + by_ctx] = top_before
    gate[length + by_ctx] = (seen > 0) & (share >= threshold)
    return hint, gate


def tilted_nats(logits: torch.Tensor, target: torch.Tensor, hint: torch.Tensor, gate: torch.Tensor,
                boost: float) -> torch.Tensor:
    """(N,) float32 nats of the tilted distribution at the targets; logits (N, V) float32."""
    lse = torch.logsumexp(logits, dim=-1)
    lp_y = logits.gather(1, target[:, None])[:, 0] - lse
    lp_h = logits.gather(1, hint[:, None])[:, 0] - lse
    tilted = -lp_y - boost * (target == hint).float() + torch.log1p(lp_h.exp() * math.expm1(boost))
    return torch.where(gate, tilted, -lp_y)


def tilted_logp(logits: torch.Tensor, hint: torch.Tensor, gate: torch.Tensor, boost: float) -> torch.Tensor:
    """(N, V) float64 log-probabilities of the tilted distributions (what is committed)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    bonus = torch.zeros_like(lp)
    bonus.scatter_(1, hint[:, None], torch.where(gate, boost, 0.0).double()[:, None])
    return torch.log_softmax(lp + bonus, dim=-1)


def evaluate_ngram_tilt(model: torch.nn.Module, vs: ValSet, context: int, stride: int, batch_seqs: int,
                        device: torch.device, order: int = 16, threshold: float = 0.8,
                        boost: float = 2.625, max_tokens: int = 0, log: EventLog | None = None) -> dict:
    """Sliding-window scoring of the tilted distribution; windows split into contiguous per-rank
    ranges (the hints depend on the tokens only, so every rank computes the same table)."""
    t0 = time.perf_counter()
    n = usable_tokens(len(vs), context, max_tokens)
    plan = window_plan(n, context, stride)
    info = dist.info()
    lo, hi = rank_slice(len(plan), info.rank, info.world_size)
    hint_np, gate_np = tilt_hints(vs.tokens[:n], order, threshold)
    hint, gate = torch.from_numpy(hint_np).to(device), torch.from_numpy(gate_np).to(device)
    log = log if log is not None else new_log("ngram_tilt", n)
    sums, hits = ScoreSums(device), torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for b in iter_window_batches(vs, plan[lo:hi], context, batch_seqs, device):
        with torch.no_grad(), autocast_ctx(device):
            logits = model.logits(b.x)[b.mask].float()
        pos, y = b.pos[b.mask], b.y[b.mask]
        h, g = hint[pos], gate[pos]
        nats = tilted_nats(logits, y, h, g, boost)
        sums.add(nats, b.nbytes[b.mask], torch.ones_like(nats, dtype=torch.bool))
        hits += torch.stack([g.sum(), (g & (h == y)).sum()]).double()
        log.score(b.ranges)
        commit_record(log, pos, nats, lambda: tilted_logp(logits, h, g, boost))
    model.train(was_training)
    res = sums.result(t0, "ngram_tilt")
    dist.all_reduce_sum(hits)
    res.update(context=context, stride=stride, n_tokens=n, windows=len(plan), tilt_order=order,
               tilt_threshold=threshold, tilt_boost=boost, tilted=int(hits[0]), tilt_hits=int(hits[1]))
    return res
