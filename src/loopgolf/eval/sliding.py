"""Sliding-window evaluation: every target scored exactly once, each with up to `context` tokens before it.

The non-overlapping windows of plain eval give the first target of each window almost no context.
Here windows of `context` tokens advance by `stride` (techniques.md section 5, record (c)
L1073-1144); plain eval is the same code with stride == context (eval/bpb.score_stream), so the
two can never disagree on which targets count or how bytes are summed.
"""
from __future__ import annotations

import torch

from loopgolf import dist
from loopgolf.data.valset import ValSet
from loopgolf.eval.bpb import score_stream
from loopgolf.eval.events import EventLog


def evaluate_sliding(model: torch.nn.Module, vs: ValSet, context: int, stride: int,
                     batch_seqs: int, device: torch.device, max_tokens: int = 0,
                     log: EventLog | None = None, autocast: bool = True) -> dict:
    """Sliding-window val_loss / val_bpb; windows split into contiguous per-rank ranges."""
    return score_stream(model, vs, context, stride, batch_seqs, device, max_tokens, log, autocast,
                        phase="sliding")


def evaluate_plain(model: torch.nn.Module, vs: ValSet, context: int, batch_seqs: int,
                   device: torch.device, max_tokens: int = 0, log: EventLog | None = None,
                   autocast: bool = True) -> dict:
    """Plain eval: non-overlapping windows of `context` (sliding with stride = context)."""
    return score_stream(model, vs, context, context, batch_seqs, device, max_tokens, log, autocast,
                        phase="plain")


def new_log(phase: str, n: int) -> EventLog:
    """An event log for this rank over a usable stream of n tokens."""
    return EventLog(phase=phase, n_tokens=n, rank=dist.info().rank)
