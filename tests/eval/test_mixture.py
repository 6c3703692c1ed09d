import math

import pytest
import torch

from loopgolf.eval.bpb import usable_tokens
from loopgolf.eval.mixture import Bigram, HashedTrigram, Unigram, default_experts, evaluate_mixture
from loopgolf.eval.sliding import evaluate_sliding, new_log
from loopgolf.lab.legality import check_events

CPU = torch.device("cpu")
MAX = 1500
pytestmark = pytest.mark.usefixtures("flush_denormals")


class EntropyExpert:
    """PR #1453's "entropy" expert: the same value, exp(-H(model)), for every token: not a distribution."""
    name = "entropy"

    def probs(self, prev1, prev2, net_logp):
        h = -(net_logp.exp() * net_logp).sum(-1, keepdim=True)
        return torch.exp(-h).expand_as(net_logp)

    def update(self, prev1, prev2, target):
        pass


def test_ngram_experts_are_distributions_after_updates():
    uni = Unigram(16, CPU)
    bi = Bigram(16, CPU, uni)
    tri = HashedTrigram(16, CPU, bi, buckets=5)  # few buckets: collisions must not break normalization
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        p1, p2, t = (torch.randint(0, 16, (50,), generator=g) for _ in range(3))
        p2[:3] = -1
        for e in (uni, bi, tri):
            probs = e.probs(p1, p2, torch.zeros(50, 16))
            assert probs.shape == (50, 16) and (probs > 0).all()
            assert torch.allclose(probs.sum(-1), torch.ones(50, dtype=torch.float64), atol=1e-12)
            e.update(p1, p2, t)
    assert uni.counts.sum() == 150
    # add-a unigram, known answer: token 3 seen c times of N=150
    c = float(uni.counts[3])
    assert float(uni.probs(p1[:1], p2[:1], None)[0, 3]) == pytest.approx((c + 0.5) / (150 + 8))


def test_mixture_is_legal_normalized_and_beats_a_weak_network(val, vs, small_model):
    tokens, luts = val
    model = small_model()
    n = usable_tokens(len(tokens), 32, MAX)
    log = new_log("mixture", n)
    net = evaluate_sliding(model, vs, 32, 16, 8, CPU, max_tokens=MAX)
    res = evaluate_mixture(model, vs, 32, 16, 8, CPU, max_tokens=MAX, log=log)
    assert res["val_tokens"] == net["val_tokens"] and res["val_bytes"] == net["val_bytes"]
    assert res["val_loss"] < net["val_loss"]  # a random network: the n-grams carry the score
    assert abs(sum(res["final_weights"]) - 1) < 1e-6
    assert check_events(log, log.n_tokens)["ok"]


def test_scoring_with_counts_of_the_scored_batch_is_impossible(val, vs, small_model):
    """Counts used for a batch exclude that batch: the first batch sees empty n-gram tables."""
    tokens, luts = val
    model = small_model()
    res = evaluate_mixture(model, vs, 32, 32, 1, CPU, max_tokens=200)
    assert math.isfinite(res["val_loss"])


def test_mixture_scores_a_plan_view(vs, small_model):
    """Eval-time depth: a GPT.at(plan) view (no .cfg) is scored like the GPT itself."""
    from loopgolf.model.recurrence import parse_plan

    model = small_model()
    view = model.at(parse_plan("2"))
    a = evaluate_mixture(model, vs, 32, 32, 8, CPU, max_tokens=300)
    b = evaluate_mixture(view, vs, 32, 32, 8, CPU, max_tokens=300)
    assert a["val_bpb"] == pytest.approx(b["val_bpb"], rel=1e-12)


def _recorded_mixture(vs, model, **kw):
    from loopgolf.lab.legality import Recorder

    n = usable_tokens(len(vs), 32, 600)
    log = new_log("mixture", n)
    log.recorder = Recorder(vs, n, seed=0, vocab=512)
    res = evaluate_mixture(model, vs, 32, 16, 8, CPU, max_tokens=600, log=log, **kw)
    return res, log.recorder


def test_every_committed_mixture_distribution_is_normalized(vs, small_model):
    res, rec = _recorded_mixture(vs, small_model())
    assert rec.problems(res) == [] and float(rec.worst[0]) < 1e-12
    assert int(rec.counts.sum()) == res["val_tokens"]


def test_hedge_mixer_entropy_expert_is_flagged(vs, small_model):
    experts = default_experts(512, CPU) + [EntropyExpert()]
    res, rec = _recorded_mixture(vs, small_model(), experts=experts, prior=[0.5, 0.1, 0.1, 0.1, 0.2])
    probs = rec.problems(res)
    assert any("do not sum to 1" in p for p in probs) and float(rec.worst[0]) > 1e-3
