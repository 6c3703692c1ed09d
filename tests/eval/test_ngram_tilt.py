import math

import numpy as np
import pytest
import torch

from loopgolf.config import ConfigError, EvalConfig
from loopgolf.eval.bpb import usable_tokens
from loopgolf.eval.ngram_tilt import evaluate_ngram_tilt, tilt_hints, tilted_logp, tilted_nats
from loopgolf.eval.recipe import evaluate
from loopgolf.eval.sliding import evaluate_sliding, new_log
from loopgolf.lab.legality import check_behaviour, check_events

CPU = torch.device("cpu")
MAX = 1200
pytestmark = pytest.mark.usefixtures("flush_denormals")


def _reference_hints(tokens, order, threshold):
    """#2135's online_ngram_state.c token channel, one position at a time with exact contexts."""
    total, pair, top = {}, {}, {}
    hint, gate = np.zeros(len(tokens), dtype=np.int64), np.zeros(len(tokens), dtype=bool)
    for p in range(order - 1, len(tokens)):
        ctx, tok = tuple(tokens[p - order + 1:p].tolist()), int(tokens[p])
        if total.get(ctx, 0):
            best_tok, best = top[ctx]
            hint[p], gate[p] = best_tok, best / total[ctx] >= threshold
        pair[ctx, tok] = pair.get((ctx, tok), 0) + 1
        total[ctx] = total.get(ctx, 0) + 1
        if pair[ctx, tok] > top.get(ctx, (0, 0))[1]:  # only a strictly larger count takes over
            top[ctx] = (tok, pair[ctx, tok])
    return hint, gate


def test_hints_have_the_known_values():
    # order 2 (context: the previous token). After a 5 came 7 (p=1), 7 (p=3), 9 (p=5); after 7 came
    # 5 (p=2). The hint at p is the leader among earlier positions with its context.
    tokens = np.array([5, 7, 5, 7, 5, 9, 5, 3])
    hint, gate = tilt_hints(tokens, order=2, threshold=0.6)
    assert hint[[3, 4, 5, 7]].tolist() == [7, 5, 7, 7]  # shares 1/1, 1/1, 2/2, 2/3 (9 never passes 7)
    assert gate[[3, 4, 5, 7]].tolist() == [True, True, True, True]
    assert not gate[[0, 1, 2, 6]].any()  # no earlier position with that context (p=6: after a 9)
    hint2, gate2 = tilt_hints(tokens, order=2, threshold=0.7)
    assert gate2[[3, 4, 5, 7]].tolist() == [True, True, True, False]  # 2/3 < 0.7


@pytest.mark.parametrize("order,threshold", [(2, 0.7), (3, 0.8), (5, 0.5)])
def test_vectorized_hints_equal_the_online_reference(order, threshold):
    rng = np.random.default_rng(order)
    tokens = rng.integers(0, 6, 4000)
    for p in range(1, len(tokens)):  # a skewed Markov chain: some contexts have a clear leader
        if rng.random() < 0.6:
            tokens[p] = (tokens[p - 1] + 1) % 6
    tokens[1000:1400] = tokens[200:600]  # long repeats: high-order contexts recur
    hint, gate = tilt_hints(tokens, order, threshold)
    ref_hint, ref_gate = _reference_hints(tokens, order, threshold)
    assert np.array_equal(gate, ref_gate) and 100 < gate.sum() < len(tokens) - 100
    assert np.array_equal(hint, ref_hint)  # the leader of every seen context, ties kept by the first


def test_tilt_is_normalized_at_every_position_with_the_known_hinted_mass():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    hint, gate = torch.randint(0, 50, (64,)), torch.rand(64) < 0.6
    beta = 2.625
    lp = tilted_logp(logits, hint, gate, beta)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(64, dtype=torch.float64), atol=1e-12)
    q = torch.softmax(logits.double(), -1)
    qh = q.gather(1, hint[:, None])[:, 0]
    want = torch.where(gate, math.exp(beta) * qh / (1 + qh * math.expm1(beta)), qh)  # closed form
    assert torch.allclose(lp.exp().gather(1, hint[:, None])[:, 0], want, atol=1e-12)
    target = torch.randint(0, 50, (64,))
    target[:8] = hint[:8]  # some hits
    nats = tilted_nats(logits, target, hint, gate, beta)
    assert torch.allclose(nats.double(), -lp.gather(1, target[:, None])[:, 0], atol=1e-5)


def test_tilt_evaluator_is_legal_and_scores_every_target(vs, small_model):
    model = small_model()
    n = usable_tokens(len(vs), 32, MAX)
    log = new_log("ngram_tilt", n)
    net = evaluate_sliding(model, vs, 32, 16, 8, CPU, max_tokens=MAX)
    res = evaluate_ngram_tilt(model, vs, 32, 16, 8, CPU, order=3, threshold=0.5, max_tokens=MAX, log=log)
    assert res["val_tokens"] == net["val_tokens"] and res["val_bytes"] == net["val_bytes"]
    assert res["tilted"] > 0 and res["tilt_hits"] > 0
    assert check_events(log, log.n_tokens)["ok"]
    off = evaluate_ngram_tilt(model, vs, 32, 16, 8, CPU, order=3, threshold=0.5, boost=0.0, max_tokens=MAX)
    assert off["val_loss"] == pytest.approx(net["val_loss"], rel=1e-6)  # beta = 0 is the network
    ecfg = EvalConfig(method="ngram_tilt", stride=16, batch_tokens=32 * 8, tilt_order=3, tilt_threshold=0.5)
    rep = check_behaviour(lambda v, lg: evaluate(model, v, ecfg, CPU, 32, log=lg), vs.head(577), 577,
                          seed=5, perturbations=4, phase="ngram_tilt")
    assert rep["ok"], rep["problems"]  # normalized at every committed position, and causal
    assert rep["max_norm_error"] < 1e-9


def test_tilt_settings_are_validated():
    for bad, msg in [(dict(tilt_order=1), "tilt_order"), (dict(tilt_threshold=0.0), "tilt_threshold"),
                     (dict(tilt_boost=-1.0), "tilt_boost")]:
        with pytest.raises(ConfigError, match=msg):
            EvalConfig(method="ngram_tilt", **bad).validate(64)
