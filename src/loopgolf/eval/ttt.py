"""Score-first test-time training (TTT): adapt on validation tokens only after they are scored.

Two variants, both single-pass and structured so the order cannot be swapped by a flag:
  * ttt_sgd (record PR #1493, techniques.md 4d): the sliding windows are grouped into chunks of
    `chunk_tokens` targets by the chunk holding each window's first scored target. For each chunk:
    score its windows under no_grad and commit their losses (score_chunk), THEN, unless it is the
    last chunk, train all parameters on the chunk's tokens with SGD + momentum, cosine LR over the
    chunk index, gradient clipping, gradients all-reduced (train_chunk).
  * ttt_lora (record PR #1855, techniques.md 4e): documents (split at BOS) are scored in chunks of
    `chunk_len` targets, each with up to `context` tokens of in-document context, through LoRA
    adapters attached to every nn.Linear from outside the model (lora.py). A chunk's nats are
    detached and committed before backward(); one Adam step follows unless it is the document's
    last chunk. Optional global phases train the base weights with SGD on documents already scored.
Every score and update is recorded in an EventLog, which lab/legality.py replays. Nothing here
compiles, so there is no warm-up; a compile warm-up must use synthetic tokens, never val data.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice
from loopgolf.data.tokenizer import BOS_ID
from loopgolf.eval.bpb import usable_tokens
from loopgolf.eval.events import EventLog
from loopgolf.eval.lora import LoRA, batched_document_chunks, document_spans, pad_windows
from loopgolf.eval.sliding import (ScoreSums, autocast_ctx, iter_window_batches, new_log,
                                   score_windows, window_plan)


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


def score_chunk(model: torch.nn.Module, tokens: np.ndarray, windows: np.ndarray, context: int,
                batch_seqs: int, luts, sums: ScoreSums, log: EventLog, device: torch.device) -> None:
    """Score this rank's share of a chunk's windows under no_grad and commit them."""
    info = dist.info()
    lo, hi = rank_slice(len(windows), info.rank, info.world_size)
    model.eval()
    for batch in iter_window_batches(tokens, windows[lo:hi], context, batch_seqs, device):
        score_windows(model, batch, luts, sums, log)


def train_chunk(model: torch.nn.Module, opt: MomentumSGD, tokens: np.ndarray, start: int, end: int,
                seq_len: int, batch_seqs: int, epochs: int, lr: float, grad_clip: float,
                log: EventLog, device: torch.device) -> None:
    """Train on tokens[start:end] (split into seq_len sequences across ranks); one update per batch."""
    starts = list(range(start, end - 1, seq_len))
    info = dist.info()
    model.train()
    for _ in range(epochs):
        for b in range(0, len(starts), batch_seqs * info.world_size):
            group = starts[b:b + batch_seqs * info.world_size]
            n_targets = sum(min(s + seq_len, end - 1) - s for s in group)
            lo, hi = rank_slice(len(group), info.rank, info.world_size)
            for p in opt.params:
                p.grad = torch.zeros_like(p)
            mine = group[lo:hi]
            full = [s for s in mine if s + seq_len <= end - 1]
            parts = ([np.stack([tokens[s:s + seq_len + 1] for s in full])] if full else []) + \
                [tokens[s:end][None] for s in mine if s + seq_len > end - 1]
            for part in parts:  # the full-length sequences in one batch, a short tail alone
                seq = torch.from_numpy(part.astype(np.int64)).to(device)
                with autocast_ctx(device):
                    loss = model(seq[:, :-1], seq[:, 1:]).sum() / n_targets
                loss.backward()
            seen = [(s, min(s + seq_len, end - 1) + 1) for s in mine]
            dist.all_reduce_grads(opt.params)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(opt.params, grad_clip)
            opt.step(lr)
            log.update(seen)
    for p in opt.params:
        p.grad = None
    model.eval()


def ttt_sgd(model: torch.nn.Module, tokens: np.ndarray, luts, context: int, stride: int,
            device: torch.device, chunk_tokens: int = 32_768, lr: float = 0.005,
            momentum: float = 0.9, epochs: int = 3, seq_len: int = 0, batch_seqs: int = 32,
            grad_clip: float = 1.0, max_tokens: int = 0, log: EventLog | None = None) -> dict:
    """Score-first full-parameter SGD TTT (record PR #1493: chunks 32,768, lr 0.005, momentum 0.9,
    3 epochs, clip 1.0, cosine LR over chunks). seq_len 0 = context. Adapts `model` in place."""
    t0 = time.perf_counter()
    n = usable_tokens(len(tokens), context, max_tokens)
    plan = window_plan(n, context, stride)
    chunk_of = (plan[:, 1] - 1) // chunk_tokens
    n_chunks = int(chunk_of[-1]) + 1
    log = log if log is not None else new_log("ttt_sgd", n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MomentumSGD(params, momentum)
    sums = ScoreSums(device)
    for c in range(n_chunks):
        score_chunk(model, tokens, plan[chunk_of == c], context, batch_seqs, luts, sums, log, device)
        if c == n_chunks - 1:
            break  # the last chunk is never trained on: nothing is left to score
        lr_c = lr * 0.5 * (1 + math.cos(math.pi * c / max(1, n_chunks - 1)))
        end = min((c + 1) * chunk_tokens, n - 1) + 1
        train_chunk(model, opt, tokens, c * chunk_tokens, end, seq_len or context, batch_seqs,
                    epochs, lr_c, grad_clip, log, device)
    res = sums.result(t0)
    res.update(context=context, stride=stride, chunks=n_chunks, chunk_tokens=chunk_tokens, lr=lr,
               epochs=epochs, updates=log.version, n_tokens=n)
    return res


def ttt_lora(model: torch.nn.Module, tokens: np.ndarray, luts, device: torch.device,
             context: int = 1024, chunk_len: int = 48, rank: int = 8, alpha: float = 16.0,
             lr: float = 1e-4, beta2: float = 0.99, weight_decay: float = 0.5, docs_per_batch: int = 64,
             phases: int = 0, phase_lr: float = 0.001, phase_seq_len: int = 0,
             warm_start_a: bool = False, max_tokens: int = 0, log: EventLog | None = None) -> dict:
    """Score-first per-document LoRA TTT (record PR #1855: chunk 48, AdamW betas (0, 0.99),
    lr 1e-4, wd 0.5; documents batched longest first). The stream is truncated as in evaluate_bpb
    with seq_len = context. `phases` > 0 trains the base weights with SGD on the documents scored so
    far after each of `phases` equal slices of the batches (PR #1855's global phases); the base
    model is adapted in place."""
    t0 = time.perf_counter()
    n = usable_tokens(len(tokens), context, max_tokens)
    spans = document_spans(tokens[:n])
    order = sorted(range(len(spans)), key=lambda d: -(spans[d][1] - spans[d][0]))
    batches = [order[i:i + docs_per_batch] for i in range(0, len(order), docs_per_batch)]
    info = dist.info()
    mine = batches[info.rank::info.world_size]
    n_rounds = math.ceil(len(batches) / info.world_size)
    log = log if log is not None else new_log("ttt_lora", n)
    log.lockstep = False  # each rank adapts its own LoRA copies
    lora = LoRA(model, docs_per_batch, rank, alpha, device)
    sums = ScoreSums(device)
    # A document's last target is usually the next document's BOS, which the next document's
    # adapter reads as its first input: score all of those first, before any update.
    bounds = [(max(s, e - context), e, e + 1) for b in mine for s, e in (spans[d] for d in b)
              if tokens[e] == BOS_ID]
    model.eval()
    for i in range(0, len(bounds), docs_per_batch):
        x, y, mask = pad_windows(tokens, bounds[i:i + docs_per_batch], device)
        with torch.no_grad(), autocast_ctx(device):
            sums.add(model(x, y), x, y, mask, luts)
        log.score([(lo, hi) for _, lo, hi in bounds[i:i + docs_per_batch]])
    chunked = [(s, e - 1 if tokens[e] == BOS_ID else e) for s, e in spans]
    phase_at = {round(n_rounds * (k + 1) / (phases + 1)) for k in range(phases)} if phases else set()
    scored: list[tuple[int, int]] = []
    base = [p for p in model.parameters() if p.requires_grad]
    opt = MomentumSGD(base, 0.9)
    for p in base:  # only the adapters learn per document; phases re-enable the base weights
        p.requires_grad_(False)
    for r in range(n_rounds):
        if r < len(mine):
            lora.reset(info.rank + r * info.world_size, keep_a=warm_start_a and r > 0)
            for step in batched_document_chunks([chunked[d] for d in mine[r]], tokens, chunk_len,
                                                context, device):
                model.eval()
                with lora.active(step.slots), autocast_ctx(device):
                    nats = model(step.x, step.y)
                sums.add(nats.detach(), step.x, step.y, step.mask, luts)  # committed before backward
                log.score(step.scored)
                if step.train_rows.any():
                    m = step.mask & step.train_rows[:, None]
                    loss = (nats * m).sum() / m.sum()
                    loss.backward()
                    lora.adam_step(step.slots[step.train_rows], lr, beta2, weight_decay)
                    log.update(step.seen)
                model.zero_grad(set_to_none=True)
            scored += [(spans[d][0], spans[d][1] + 1) for d in mine[r]]
        if r + 1 in phase_at:
            _global_phase(model, opt, tokens, scored, phase_seq_len or context, phase_lr, log, device,
                          lora)
    lora.remove()
    for p in base:
        p.requires_grad_(True)
    res = sums.result(t0)
    res.update(context=context, chunk_len=chunk_len, lora_rank=rank, documents=len(spans),
               phases=phases, updates=log.version, n_tokens=n)
    return res


def _global_phase(model: torch.nn.Module, opt: MomentumSGD, tokens: np.ndarray,
                  scored: list[tuple[int, int]], seq_len: int, lr: float, log: EventLog,
                  device: torch.device, lora: LoRA, step_tokens: int = 32_768) -> None:
    """One epoch of SGD (momentum 0.9, clip 1.0, cosine LR) on the base weights over this rank's
    scored documents, ~step_tokens per rank per step; ranks step in lock-step."""
    seqs = [(s, min(s + seq_len, hi - 1)) for lo, hi in scored for s in range(lo, hi - 1, seq_len)]
    per_step = max(1, step_tokens // seq_len)
    groups = [seqs[i:i + per_step] for i in range(0, len(seqs), per_step)]
    steps = torch.tensor([len(groups)], device=device)
    n_steps = int(dist.all_reduce_max(steps).item())
    for p in opt.params:
        p.requires_grad_(True)
    model.train()
    for i in range(n_steps):
        group = groups[i] if i < len(groups) else []
        count = torch.tensor([float(sum(e - s for s, e in group))], device=device)
        total = max(float(dist.all_reduce_sum(count).item()), 1.0)
        for p in opt.params:
            p.grad = torch.zeros_like(p)
        for s, e in group:
            seq = torch.from_numpy(tokens[s:e + 1].astype(np.int64)).to(device)
            with autocast_ctx(device):
                (model(seq[None, :-1], seq[None, 1:]).sum() / total).backward()
        dist.all_reduce_grads(opt.params)
        torch.nn.utils.clip_grad_norm_(opt.params, 1.0)
        opt.step(lr * 0.5 * (1 + math.cos(math.pi * i / max(1, n_steps))))
        log.update([(s, e + 1) for s, e in group])
    for p in opt.params:
        p.grad = None
        p.requires_grad_(False)
    lora.clear_grads()
    model.eval()
