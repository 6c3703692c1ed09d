"""The scoring recipe as code: EvalConfig.method -> one evaluator, every setting from the config.

`evaluate(model, valset, ecfg, device, seq_len)` is what train-time eval, `loopgolf eval`, the
eval suite and depth sweeps call, so a run's reported score is the recipe's score and the recipe
travels in config.json and the artifact (EvalConfig is a RunConfig section). Evaluators that adapt
weights (the TTT variants) run on a deep copy, so the caller's model (the one that ships) is never
changed by scoring. Each registry entry has the signature
    fn(model, valset, ecfg, device, context, max_tokens, log) -> result dict
and an optional `log` (eval/events.EventLog) lets lab/legality.py replay and probe the run.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from loopgolf import dist
from loopgolf.config import EVAL_METHODS, EvalConfig
from loopgolf.config_eval import parse_short_chunks
from loopgolf.data.valset import ValSet
from loopgolf.eval.bpb import NonFiniteScoreError
from loopgolf.eval.events import EventLog
from loopgolf.eval.mixture import evaluate_mixture
from loopgolf.eval.ngram_tilt import evaluate_ngram_tilt
from loopgolf.eval.sliding import evaluate_plain, evaluate_sliding
from loopgolf.eval.ttt import ttt_lora, ttt_sgd

Evaluator = Callable[..., dict]


def rank_batch_seqs(ecfg: EvalConfig, context: int) -> int:
    """Windows per scoring forward on one rank: eval.batch_tokens split over the ranks."""
    return max(1, ecfg.batch_tokens // context // dist.info().world_size)


def _plain(model, vs, ecfg, device, context, max_tokens, log):
    return evaluate_plain(model, vs, context, rank_batch_seqs(ecfg, context), device, max_tokens, log)


def _sliding(model, vs, ecfg, device, context, max_tokens, log):
    return evaluate_sliding(model, vs, context, ecfg.stride, rank_batch_seqs(ecfg, context), device,
                            max_tokens, log)


def _ttt_sgd(model, vs, ecfg, device, context, max_tokens, log):
    return ttt_sgd(model, vs, context, ecfg.stride, device, chunk_tokens=ecfg.sgd_chunk_tokens,
                   lr=ecfg.sgd_lr, momentum=ecfg.sgd_momentum, epochs=ecfg.sgd_epochs,
                   seq_len=ecfg.sgd_seq_len, batch_seqs=rank_batch_seqs(ecfg, context),
                   train_batch_seqs=ecfg.sgd_batch_seqs, grad_clip=ecfg.sgd_grad_clip,
                   micro_seqs=ecfg.sgd_micro_seqs, max_tokens=max_tokens, log=log,
                   freeze_blocks=ecfg.sgd_freeze_blocks)


def _ttt_lora(model, vs, ecfg, device, context, max_tokens, log):
    return ttt_lora(model, vs, device, context=context, chunk_len=ecfg.lora_chunk,
                    rank=ecfg.lora_rank, alpha=ecfg.lora_alpha, lr=ecfg.lora_lr,
                    beta2=ecfg.lora_beta2, weight_decay=ecfg.lora_weight_decay,
                    docs_per_batch=ecfg.lora_docs_per_batch, phases=ecfg.lora_phases,
                    phase_lr=ecfg.lora_phase_lr, phase_seq_len=ecfg.lora_phase_seq_len,
                    phase_batch_seqs=ecfg.lora_phase_batch_seqs, micro_seqs=ecfg.sgd_micro_seqs,
                    warm_start_a=ecfg.lora_warm_start_a, max_tokens=max_tokens, log=log,
                    targets=ecfg.lora_targets, per_visit=ecfg.lora_per_visit,
                    phase_prefix_docs=ecfg.lora_phase_prefix_docs,
                    short_chunks=parse_short_chunks(ecfg.lora_short_chunks))


def _mixture(model, vs, ecfg, device, context, max_tokens, log):
    k = 4  # network, unigram, bigram, trigram (mixture.default_experts)
    prior = [ecfg.mix_network_prior] + [(1 - ecfg.mix_network_prior) / (k - 1)] * (k - 1)
    return evaluate_mixture(model, vs, context, ecfg.stride, max(1, ecfg.batch_tokens // context),
                            device, prior=prior, eta=ecfg.mix_eta, max_tokens=max_tokens,
                            trigram_buckets=ecfg.mix_trigram_buckets, log=log)


def _ngram_tilt(model, vs, ecfg, device, context, max_tokens, log):
    return evaluate_ngram_tilt(model, vs, context, ecfg.stride, rank_batch_seqs(ecfg, context), device,
                               order=ecfg.tilt_order, threshold=ecfg.tilt_threshold,
                               boost=ecfg.tilt_boost, max_tokens=max_tokens, log=log)


EVALUATORS: dict[str, Evaluator] = {"plain": _plain, "sliding": _sliding, "ttt_sgd": _ttt_sgd,
                                    "ttt_lora": _ttt_lora, "mixture": _mixture, "ngram_tilt": _ngram_tilt}
ADAPTS_WEIGHTS = frozenset({"ttt_sgd", "ttt_lora"})
assert tuple(EVALUATORS) == EVAL_METHODS, "config.EVAL_METHODS and EVALUATORS must list the same methods"


def eval_context(ecfg: EvalConfig, seq_len: int) -> int:
    return ecfg.context or seq_len


def evaluate(model: torch.nn.Module, valset: ValSet, ecfg: EvalConfig, device: torch.device,
             seq_len: int, max_tokens: int | None = None, log: EventLog | None = None) -> dict:
    """Score `valset` with the recipe `ecfg`; keys val_loss, val_bpb, val_tokens, val_bytes,
    eval_seconds, method, bytes_source, plus the evaluator's own. max_tokens None = ecfg.max_tokens.
    Raises NonFiniteScoreError (a ValueError) rather than return a NaN or infinite score."""
    ecfg.validate(seq_len)
    context = eval_context(ecfg, seq_len)
    limit = ecfg.max_tokens if max_tokens is None else max_tokens
    was_training = model.training
    target = copy.deepcopy(model) if ecfg.method in ADAPTS_WEIGHTS else model
    try:
        res = EVALUATORS[ecfg.method](target, valset, ecfg, device, context, limit, log)
    finally:
        model.train(was_training)
    if not all(math.isfinite(res[k]) for k in ("val_loss", "val_bpb")):
        raise NonFiniteScoreError(f"eval.method={ecfg.method}: non-finite score {res['val_bpb']}")
    res["method"] = ecfg.method
    res["bytes_source"] = valset.bytes_source
    return res
