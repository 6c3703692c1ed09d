"""Score-first test-time training (TTT): adapt on validation tokens only after they are scored.

Two variants, both single-pass and structured so the order cannot be swapped by a flag:
  * ttt_sgd (record PR #1493, techniques.md 4d): the sliding windows are grouped into chunks of
    `chunk_tokens` targets by the chunk holding each window's first scored target. For each chunk:
    score its windows under no_grad and commit their losses (score_chunk), THEN, unless it is the
    last chunk, train all parameters on the chunk's tokens with SGD + momentum, cosine LR over the
    chunk index, gradient clipping (train_chunk).
  * ttt_lora (record PR #1855, techniques.md 4e): documents (split at BOS) are scored in chunks of
    `chunk_len` targets, each with up to `context` tokens of in-document context, through LoRA
    adapters attached to every nn.Linear from outside the model (lora.py). A chunk's nats are
    detached and committed before backward(); one Adam step follows unless it is the document's
    last chunk. Optional global phases train the base weights with SGD on documents already scored
    (after equal slices of the batches, or inside a prefix of documents as #1855: phase_plan).
    Which modules get adapters, one per module or per loop visit, and the chunk length of short
    documents (PR #2014) are eval.lora_targets / lora_per_visit / lora_short_chunks (eval/lora.py).
Rank independence (issue 16 finding 5): every update's batch is a fixed number of sequences of the
GLOBAL stream, split over ranks, and LoRA batches and phase boundaries are indices into the global
list of document batches, so the updates are a function of the data, never of the world size.
LoRA batches hold consecutive documents in stream order, so a phase trains only on the stream's
prefix. Every score and update is recorded in an EventLog, which lab/legality.py replays.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice
from loopgolf.data.tokenizer import BOS_ID
from loopgolf.data.valset import ValSet
from loopgolf.eval.bpb import (ScoreSums, autocast_ctx, commit_record, iter_window_batches,
                               score_windows, usable_tokens, window_plan)
from loopgolf.eval.events import EventLog
from loopgolf.eval.lora import LoRA, batched_document_chunks, chunk_lengths, document_spans, pad_windows
from loopgolf.eval.sliding import new_log


class MomentumSGD:
    """p -= lr * buf, buf = momentum * buf + grad (PyTorch's SGD without dampening or nesterov)."""

    def __init__(self, params: list[torch.nn.Parameter], momentum: float):
        self.params, self.momentum = params, momentum
        self.bufs = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for p, b in zip(self.params, self.bufs):
            if p.grad is not None:
                b.mul_(self.momentum).add_(p.grad)
                p.add_(b, alpha=-lr)


def score_chunk(model: torch.nn.Module, vs: ValSet, windows: np.ndarray, context: int,
                batch_seqs: int, sums: ScoreSums, log: EventLog, device: torch.device) -> None:
    """Score this rank's share of a chunk's windows under no_grad and commit them."""
    info = dist.info()
    lo, hi = rank_slice(len(windows), info.rank, info.world_size)
    model.eval()
    for batch in iter_window_batches(vs, windows[lo:hi], context, batch_seqs, device):
        score_windows(model, batch, sums, log)


def sgd_on_sequences(model: torch.nn.Module, opt: MomentumSGD, tokens: np.ndarray,
                     seqs: list[tuple[int, int]], batch_seqs: int, lr_at, grad_clip: float,
                     log: EventLog, device: torch.device, micro_seqs: int = 4) -> int:
    """One SGD step per `batch_seqs` consecutive sequences (s, e) of the global list, each reading
    tokens[s:e+1]; lr_at(i) is step i's LR; returns the number of steps.

    A step's sequences form micro-batches of `micro_seqs` consecutive sequences (fixed by the data)
    that are split over ranks; their float32 gradients are summed in float64, which is exact for
    gradients of similar magnitude, so the step does not depend on how many ranks computed it."""
    info = dist.info()
    n_steps = math.ceil(len(seqs) / batch_seqs)
    acc = [torch.zeros_like(p, dtype=torch.float64) for p in opt.params]
    model.train()
    for i in range(n_steps):
        group = seqs[i * batch_seqs:(i + 1) * batch_seqs]
        n_targets = sum(e - s for s, e in group)
        micro = [group[j:j + micro_seqs] for j in range(0, len(group), micro_seqs)]
        lo, hi = rank_slice(len(micro), info.rank, info.world_size)
        for a in acc:
            a.zero_()
        for mb in micro[lo:hi]:
            for length in sorted({e - s for s, e in mb}, reverse=True):  # equal lengths together
                part = np.stack([tokens[s:e + 1] for s, e in mb if e - s == length])
                seq = torch.from_numpy(part.astype(np.int64)).to(device)
                for p in opt.params:
                    p.grad = None
                with autocast_ctx(device):
                    loss = model(seq[:, :-1], seq[:, 1:]).sum() / n_targets
                loss.backward()
                for a, p in zip(acc, opt.params):
                    if p.grad is not None:
                        a.add_(p.grad.double())
        flat = dist.all_reduce_sum(torch.cat([a.reshape(-1) for a in acc]))
        for a, p, g in zip(acc, opt.params, flat.split([a.numel() for a in acc])):
            p.grad = g.view_as(p).to(p.dtype)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(opt.params, grad_clip)
        opt.step(lr_at(i))
        log.update([(s, e + 1) for mb in micro[lo:hi] for s, e in mb])
    for p in opt.params:
        p.grad = None
    model.eval()
    return n_steps


def train_chunk(model: torch.nn.Module, opt: MomentumSGD, vs: ValSet, start: int, end: int,
                seq_len: int, batch_seqs: int, epochs: int, lr: float, grad_clip: float,
                log: EventLog, device: torch.device, micro_seqs: int = 4) -> None:
    """Train on tokens[start:end] in seq_len sequences, `batch_seqs` global sequences per update."""
    seqs = [(s, min(s + seq_len, end - 1)) for s in range(start, end - 1, seq_len)]
    for _ in range(epochs):
        sgd_on_sequences(model, opt, vs.tokens, seqs, batch_seqs, lambda i: lr, grad_clip, log, device,
                         micro_seqs)


def frozen_block_params(model: torch.nn.Module, n_blocks: int) -> list[torch.nn.Parameter]:
    """The parameters of physical blocks 0..n_blocks-1 (`blocks.<i>.`), which TTT leaves as they
    are (PR #927 L948-960, TTT_FREEZE_BLOCKS=1: the first shared block, on each of its visits)."""
    if n_blocks <= 0:
        return []
    prefixes = tuple(f"blocks.{i}." for i in range(n_blocks))
    out = [p for name, p in model.named_parameters() if name.startswith(prefixes)]
    if not out:
        raise ValueError(f"eval.sgd_freeze_blocks={n_blocks}: the model has no blocks.<i> parameters")
    return out


def ttt_sgd(model: torch.nn.Module, vs: ValSet, context: int, stride: int, device: torch.device,
            chunk_tokens: int = 32_768, lr: float = 0.005, momentum: float = 0.9, epochs: int = 3,
            seq_len: int = 0, batch_seqs: int = 32, train_batch_seqs: int = 32,
            grad_clip: float = 1.0, micro_seqs: int = 4, max_tokens: int = 0,
            log: EventLog | None = None, freeze_blocks: int = 0) -> dict:
    """Score-first full-parameter SGD TTT (record PR #1493: chunks 32,768, lr 0.005, momentum 0.9,
    3 epochs, clip 1.0, cosine LR over chunks). seq_len 0 = context; batch_seqs: windows per
    scoring forward on one rank; train_batch_seqs: global sequences per update, in micro-batches
    of micro_seqs (sgd_on_sequences). freeze_blocks > 0 keeps the first physical blocks fixed
    (frozen_block_params; they get no gradient and no clip share). Adapts `model` in place."""
    t0 = time.perf_counter()
    n = usable_tokens(len(vs), context, max_tokens)
    plan = window_plan(n, context, stride)
    chunk_of = (plan[:, 1] - 1) // chunk_tokens
    n_chunks = int(chunk_of[-1]) + 1
    log = log if log is not None else new_log("ttt_sgd", n)
    frozen = [p for p in frozen_block_params(model, freeze_blocks) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        res = _ttt_sgd_chunks(model, vs, context, plan, chunk_of, n_chunks, n, device, chunk_tokens,
                              lr, momentum, epochs, seq_len, batch_seqs, train_batch_seqs,
                              grad_clip, micro_seqs, log)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    res.update(context=context, stride=stride, chunks=n_chunks, chunk_tokens=chunk_tokens, lr=lr,
               epochs=epochs, updates=log.version, n_tokens=n, frozen_params=sum(p.numel() for p in frozen))
    res["eval_seconds"] = time.perf_counter() - t0
    return res


def _ttt_sgd_chunks(model, vs: ValSet, context: int, plan: np.ndarray, chunk_of: np.ndarray,
                    n_chunks: int, n: int, device: torch.device, chunk_tokens: int, lr: float,
                    momentum: float, epochs: int, seq_len: int, batch_seqs: int,
                    train_batch_seqs: int, grad_clip: float, micro_seqs: int, log: EventLog) -> dict:
    """ttt_sgd's loop: score chunk c, then (unless it is the last) train on it."""
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MomentumSGD(params, momentum)
    sums = ScoreSums(device)
    for c in range(n_chunks):
        score_chunk(model, vs, plan[chunk_of == c], context, batch_seqs, sums, log, device)
        if c == n_chunks - 1:
            break  # the last chunk is never trained on: nothing is left to score
        lr_c = lr * 0.5 * (1 + math.cos(math.pi * c / max(1, n_chunks - 1)))
        end = min((c + 1) * chunk_tokens, n - 1) + 1
        train_chunk(model, opt, vs, c * chunk_tokens, end, seq_len or context, train_batch_seqs,
                    epochs, lr_c, grad_clip, log, device, micro_seqs)
    return sums.result(t0, "ttt_sgd")


def phase_boundaries(n_batches: int, phases: int) -> list[int]:
    """Batch indices after which each global phase runs: round(n_batches * (k+1) / (phases+1))."""
    if phases <= 0:
        return []
    if n_batches < phases + 1:
        raise ValueError(f"ttt_lora: {phases} phase(s) need at least {phases + 1} document batches; "
                         f"this stream has {n_batches}: lower eval.lora_docs_per_batch or eval.lora_phases")
    return [round(n_batches * (k + 1) / (phases + 1)) for k in range(phases)]


def phase_plan(n_docs: int, docs_per_batch: int, phases: int, prefix_docs: int = 0) -> list[tuple[int, int]]:
    """(batch edge, documents) of each global phase: it runs once the first `edge` document batches
    are scored and trains on the first `documents` documents (all of them scored by then).
    prefix_docs 0: edges at equal slices of the batches (phase_boundaries), over every document of
    the batches before the edge. prefix_docs > 0 (PR #1855 L3032-3037, PHASED_TTT_PREFIX_DOCS):
    phase k trains on the first min(prefix, n_docs) * (k+1) // phases documents, once the batch
    holding the last of them is scored (#1855 scores the batches past its prefix after the phases)."""
    n_batches = math.ceil(n_docs / docs_per_batch)
    if prefix_docs <= 0:
        return [(b, min(b * docs_per_batch, n_docs)) for b in phase_boundaries(n_batches, phases)]
    p = min(prefix_docs, n_docs)
    return [(math.ceil(d / docs_per_batch), d) for d in (p * (k + 1) // phases for k in range(phases))]


def ttt_lora(model: torch.nn.Module, vs: ValSet, device: torch.device, context: int = 1024,
             chunk_len: int = 48, rank: int = 8, alpha: float = 16.0, lr: float = 1e-4,
             beta2: float = 0.99, weight_decay: float = 0.5, docs_per_batch: int = 64,
             phases: int = 0, phase_lr: float = 0.001, phase_seq_len: int = 0,
             phase_batch_seqs: int = 32, micro_seqs: int = 4, warm_start_a: bool = False,
             max_tokens: int = 0, log: EventLog | None = None, targets: str = "all",
             per_visit: bool = False, phase_prefix_docs: int = 0,
             short_chunks: tuple[tuple[int, int], ...] = ()) -> dict:
    """Score-first per-document LoRA TTT (record PR #1855: chunk 48, AdamW betas (0, 0.99),
    lr 1e-4, wd 0.5). Batches of `docs_per_batch` consecutive documents; the stream is truncated as
    in plain eval with seq_len = context. `phases` > 0 trains the base weights with SGD on the
    documents scored so far after each of `phases` equal slices of the batches (PR #1855's global
    phases; phase_batch_seqs global sequences per step; phase_prefix_docs: see phase_plan); the
    base model is adapted in place. targets / per_visit: which sites get adapters and whether a
    looped block's visits share them (eval/lora_targets.py); short_chunks: smaller chunks for
    short documents (lora.chunk_lengths, PR #2014)."""
    t0 = time.perf_counter()
    info = dist.info()
    if warm_start_a and info.world_size > 1:
        raise ValueError("ttt_lora: warm_start_a keeps A from this rank's previous batch, which "
                         "depends on the world size; run it on one process or turn it off")
    tokens = vs.tokens
    n = usable_tokens(len(vs), context, max_tokens)
    spans = document_spans(tokens[:n])
    batches = [list(range(i, min(i + docs_per_batch, len(spans))))
               for i in range(0, len(spans), docs_per_batch)]
    plan = phase_plan(len(spans), docs_per_batch, phases, phase_prefix_docs)
    log = log if log is not None else new_log("ttt_lora", n)
    lora = LoRA(model, docs_per_batch, rank, alpha, device, targets=targets, per_visit=per_visit)
    sums = ScoreSums(device)
    model.eval()
    # A document's last target is usually the next document's BOS, which the next document's
    # adapter reads as its first input: score all of those first, before any update (one forward
    # per global batch, so the rows are the same on any world size).
    for b in batches[info.rank::info.world_size]:
        wins = [(max(s, e - context), e, e + 1) for s, e in (spans[d] for d in b) if tokens[e] == BOS_ID]
        if wins:
            x, y, mask, pos = pad_windows(tokens, wins, device)
            with torch.no_grad(), autocast_ctx(device):
                nats = model(x, y)
            sums.add(nats, torch.from_numpy(vs.target_bytes[pos.cpu().numpy()]).to(device), mask)
            log.score([(lo, hi) for _, lo, hi in wins])
            commit_record(log, pos[mask], nats[mask], lambda: _logp(model.logits, x, mask))
    chunked = [(s, e - 1 if tokens[e] == BOS_ID else e) for s, e in spans]
    lens = chunk_lengths(spans, chunk_len, short_chunks)
    base = [p for p in model.parameters() if p.requires_grad]
    opt = MomentumSGD(base, 0.9)
    for p in base:  # only the adapters learn per document; phases re-enable the base weights
        p.requires_grad_(False)
    edges = [0] + [b for b, _ in plan] + [len(batches)]
    phase_steps: list[int] = []
    for k in range(len(edges) - 1):
        for g in range(edges[k] + info.rank, edges[k + 1], info.world_size):
            lora.reset(g, keep_a=warm_start_a and g > 0)
            _score_and_adapt(lora, vs, [chunked[d] for d in batches[g]], [lens[d] for d in batches[g]],
                             context, lr, beta2, weight_decay, sums, log, device)
        if k < len(plan):
            phase_steps.append(_global_phase(model, opt, tokens, spans[:plan[k][1]],
                                             phase_seq_len or context, phase_batch_seqs, phase_lr,
                                             log, device, lora, micro_seqs))
    lora.remove()
    for p in base:
        p.requires_grad_(True)
    res = sums.result(t0, "ttt_lora")
    res.update(context=context, chunk_len=chunk_len, lora_rank=rank, documents=len(spans),
               lora_sites=len(lora.sites), lora_adapters=len(lora.A), short_chunked=sum(c != chunk_len for c in lens),
               batches=len(batches), phases=phases, phases_run=sum(s > 0 for s in phase_steps),
               phase_steps=sum(phase_steps), updates=log.version, n_tokens=n)
    return res


def _logp(logits_fn, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), autocast_ctx(x.device):
        return torch.log_softmax(logits_fn(x)[mask].double(), -1)


def _score_and_adapt(lora: LoRA, vs: ValSet, spans: list[tuple[int, int]], chunk_lens: list[int],
                     context: int, lr: float, beta2: float, weight_decay: float, sums: ScoreSums,
                     log: EventLog, device: torch.device) -> None:
    """One batch of documents: each step scores chunk k of every document, commits it, then takes
    one Adam step on the adapters of the documents that have a chunk left (a local update)."""
    model = lora.model
    for step in batched_document_chunks(spans, vs.tokens, chunk_lens, context, device):
        model.eval()
        with autocast_ctx(device):
            nats = lora.nll(step.x, step.y, step.slots)
        nbytes = torch.from_numpy(vs.target_bytes[step.pos.cpu().numpy()]).to(device)
        sums.add(nats.detach(), nbytes, step.mask)  # committed before backward
        log.score(step.scored)
        commit_record(log, step.pos[step.mask], nats.detach()[step.mask],
                      lambda: _logp(lambda x: lora.logits(x, step.slots), step.x, step.mask))
        if step.train_rows.any():
            m = step.mask & step.train_rows[:, None]
            # each document's mean loss, summed: a slot's gradient never depends on the other rows
            loss = ((nats * m).sum(1) / m.sum(1).clamp_min(1)).sum()
            loss.backward()
            lora.adam_step(step.slots[step.train_rows], lr, beta2, weight_decay)
            log.update(step.seen, scope="local")
        model.zero_grad(set_to_none=True)


def _global_phase(model: torch.nn.Module, opt: MomentumSGD, tokens: np.ndarray,
                  spans: list[tuple[int, int]], seq_len: int, batch_seqs: int, lr: float,
                  log: EventLog, device: torch.device, lora: LoRA, micro_seqs: int) -> int:
    """One epoch of SGD (momentum 0.9, clip 1.0, cosine LR) on the base weights over the scored
    documents `spans` (s, e) = targets s+1..e, in stream order; returns the number of steps."""
    seqs = [(s, min(s + seq_len, e)) for lo, e in spans for s in range(lo, e, seq_len)]
    n_steps = math.ceil(len(seqs) / batch_seqs)
    for p in opt.params:
        p.requires_grad_(True)
    steps = sgd_on_sequences(model, opt, tokens, seqs, batch_seqs,
                             lambda i: lr * 0.5 * (1 + math.cos(math.pi * i / max(1, n_steps))),
                             1.0, log, device, micro_seqs)
    for p in opt.params:
        p.requires_grad_(False)
    lora.clear_grads()
    return steps
