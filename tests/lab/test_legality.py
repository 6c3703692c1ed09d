import numpy as np
import torch

from loopgolf.config import ModelConfig
from loopgolf.data.tokenizer import load_tokenizer
from loopgolf.eval.events import EventLog
from loopgolf.lab.legality import (check_events, check_normalized, check_overlap, check_tokenizer_bytes,
                                   docs_from_tokens, network_distribution, summarize)
from loopgolf.model.gpt import GPT


def test_score_first_log_passes():
    a, b = EventLog("ttt", 9, rank=0), EventLog("ttt", 9, rank=1)
    a.score([(1, 3)]); b.score([(3, 5)])
    a.update([(0, 3)]); b.update([(3, 5)])  # lock-step: one global update, both halves
    a.score([(5, 7)]); b.score([(7, 9)])
    rep = check_events([a, b], a.n_tokens)
    assert rep["ok"] and rep["scored"] == rep["targets"] == 8 and rep["updates"] == 1


def test_flags_double_gap_and_train_then_score():
    log = EventLog("bad", 10)
    log.score([(1, 4)])
    log.update([(3, 8)])
    log.score([(3, 6)])  # 3 twice; 3, 4, 5 seen by the update before being scored
    rep = check_events(log, 10)
    assert not rep["ok"] and not rep["score_first"]
    text = " | ".join(rep["problems"])
    assert "never scored" in text and "more than once" in text and "train-then-score" in text
    assert "position 3 scored on rank 0 after global update 1 read it" in text
    assert "never scored (positions 6, 7, 8, 9)" in text


def test_cross_rank_violation_is_caught_in_lockstep_logs():
    a, b = EventLog("x", 5, rank=0), EventLog("x", 5, rank=1)
    a.update([(0, 5)]); b.step_without_update()  # rank 0 trains on everything first
    b.score([(1, 5)])
    assert not check_events([a, b], a.n_tokens)["score_first"]


def test_normalization_check_on_a_network_and_a_fake():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="1"))
    tokens = np.random.default_rng(0).integers(0, 64, 100).astype(np.uint16)
    fn = network_distribution(model, tokens, 16, torch.device("cpu"))
    assert check_normalized(fn, [1, 50, 99], 64)["ok"]
    bad = check_normalized(lambda p: torch.full((64,), 0.5), [3], 64)
    assert not bad["ok"] and "sums to 32" in bad["problems"][0]
    liar = check_normalized(lambda p: (torch.full((64,), 1 / 64), 5, 1.0), [3], 64)
    assert not liar["ok"] and "committed loss" in liar["problems"][0]


def test_overlap_tokenizer_and_summary(tiny_shards):
    sp = load_tokenizer(tiny_shards["tokenizer"])
    assert check_overlap(tiny_shards["train_docs"], tiny_shards["val_docs"])["ok"]
    leak = check_overlap(tiny_shards["train_docs"], tiny_shards["val_docs"][:3] + tiny_shards["train_docs"][:2])
    assert not leak["ok"] and leak["overlapping_docs"] == 2
    from loopgolf.data.shards import load_shard
    docs = docs_from_tokens(np.asarray(load_shard(tiny_shards["val"][0])), sp, limit=5)
    assert len(docs) == 5 and docs[0] == sp.decode(sp.encode(tiny_shards["val_docs"][0]))
    assert check_tokenizer_bytes(sp, docs)["ok"]
    s = summarize({"overlap": leak, "tok": {"ok": True, "problems": []}})
    assert not s["ok"] and s["failed"] == ["overlap"]


# --- crafted logs (issue 16 finding 2): the replay uses the data's stream and the events' order ---

def _log(d):
    return EventLog.from_dict({"phase": "x", "version": 0, **d})


def test_old_version_stamps_in_train_then_score_order_are_flagged():
    log = _log({"n_tokens": 9, "events": [
        {"kind": "update", "version": 0, "rank": 0, "ranges": [[0, 9]]},
        {"kind": "score", "version": 0, "rank": 0, "ranges": [[1, 9]]}]})  # stamped as if before
    rep = check_events(log, 9)
    assert not rep["ok"] and not rep["score_first"] and "8 target(s) scored after an update" in rep["problems"][0]


def test_inverted_range_is_flagged():
    n = 9
    log = _log({"n_tokens": n, "events": [{"kind": "score", "version": 0, "rank": 0,
                                          "ranges": [[1, n], [1, n], [n, 1]]}]})
    rep = check_events(log, n)
    assert not rep["ok"]
    assert any("malformed" in p and f"[{n}, 1)" in p for p in rep["problems"])
    assert any("scored more than once" in p for p in rep["problems"])


def test_cross_rank_train_then_score_with_lockstep_false_is_flagged():
    a, b = EventLog("x", 5, rank=0, lockstep=False), EventLog("x", 5, rank=1, lockstep=False)
    a.update([(0, 5)])
    b.score([(1, 5)])  # rank 1 never joins rank 0's update: no order between them
    rep = check_events([a, b], 5)
    assert not rep["ok"] and any("disagree on the number of global updates" in p for p in rep["problems"])
    b2 = EventLog("x", 5, rank=1, lockstep=False)
    b2.step_without_update()
    b2.score([(1, 5)])
    assert not check_events([a, b2], 5)["score_first"]


def test_shrunk_stream_claims_are_flagged():
    log = EventLog("x", n_tokens=50, first_target=25)
    log.score([(25, 50)])
    rep = check_events(log, 100)
    assert not rep["ok"]
    assert any("claims targets [25, 50); the data has [1, 100)" in p for p in rep["problems"])
    assert any("74 target(s) never scored" in p for p in rep["problems"])


def test_local_updates_only_bind_their_own_rank():
    a, b = EventLog("x", 9, rank=0), EventLog("x", 9, rank=1)
    a.score([(1, 5)]); a.update([(0, 5)], scope="local"); b.score([(5, 9)])
    assert check_events([a, b], 9)["ok"]
    a.score([(4, 5)])
    rep = check_events([a, b], 9)
    assert not rep["score_first"] and "after a local update" in rep["problems"][-1]


# --- behaviour (issue 16 findings 2-4): what the evaluator does, not what its log says -------------

import math  # noqa: E402

import pytest  # noqa: E402

from loopgolf.config import EvalConfig  # noqa: E402
from loopgolf.data.valset import load_val_set  # noqa: E402
from loopgolf.eval.bpb import ScoreSums, usable_tokens, window_plan  # noqa: E402
from loopgolf.eval.lora import LoRA, batched_document_chunks, document_spans  # noqa: E402
from loopgolf.eval.mixture import default_experts, evaluate_mixture  # noqa: E402
from loopgolf.eval.recipe import evaluate  # noqa: E402
from loopgolf.eval.ttt import MomentumSGD, score_chunk, train_chunk  # noqa: E402
from loopgolf.lab.legality import Recorder, check_behaviour, perturb  # noqa: E402

CPU = torch.device("cpu")
SLICE = 577  # 18 windows of 32


@pytest.fixture(scope="module")
def vs(tiny_shards):
    return load_val_set(str(tiny_shards["dir"] / "*_val_*.bin"), tiny_shards["tokenizer"], 512).head(SLICE)


@pytest.fixture(autouse=True)
def _flush_denormals():
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def _gpt(seed=0):
    torch.manual_seed(seed)
    m = GPT(ModelConfig(vocab_size=512, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="2"))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


RECIPE = dict(stride=16, batch_tokens=32 * 8, sgd_chunk_tokens=128, sgd_epochs=1, sgd_lr=0.02,
              sgd_batch_seqs=4, lora_rank=2, lora_chunk=8, lora_docs_per_batch=4, lora_lr=0.01,
              lora_phases=1, lora_phase_batch_seqs=4)


def _check(run, vs, perturbations=4, **kw):
    return check_behaviour(run, vs, SLICE, seed=1, perturbations=perturbations, **kw)


@pytest.mark.parametrize("method", ["plain", "sliding", "ttt_sgd", "ttt_lora", "mixture"])
def test_shipped_evaluators_pass(vs, method):
    model = _gpt()
    ecfg = EvalConfig(method=method, **RECIPE)
    k = 2 if method == "ttt_lora" else 4  # LoRA TTT is the slowest on CPU
    rep = _check(lambda v, lg: evaluate(model, v, ecfg, CPU, 32, max_tokens=0, log=lg), vs, k, phase=method)
    assert rep["ok"], rep["problems"]
    assert rep["deterministic"] and len(rep["perturbed_at"]) == k
    assert rep["max_norm_error"] < 1e-12 and rep["max_nats_error"] < 1e-5


FRONTIER_LORA = {  # eval.lora_* of the frontier rows at test size (presets_frontier.py)
    "pr1855": dict(lora_targets="q,k,v,o,mlp,head", lora_per_visit=True, lora_phases=1, lora_phase_prefix_docs=4),
    "pr2014": dict(lora_targets="k,o,mlp,head", lora_per_visit=True, lora_phases=1, lora_phase_prefix_docs=4,
                   lora_short_chunks="64:6"),
}


@pytest.mark.parametrize("recipe", sorted(FRONTIER_LORA))
def test_frontier_lora_recipes_pass(vs, recipe):
    """Per-visit adapters on a looped block, the head adapter, a prefix phase and short-document
    chunks: still score-first (every committed distribution independent of the tokens after it)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="1x2"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ecfg = EvalConfig(method="ttt_lora", **{**RECIPE, **FRONTIER_LORA[recipe]})
    res = {}

    def run(v, lg):
        res.update(evaluate(model, v, ecfg, CPU, 32, max_tokens=0, log=lg))
        return res

    rep = _check(run, vs, 2, phase="ttt_lora")
    assert rep["ok"], rep["problems"]
    assert rep["deterministic"] and rep["max_nats_error"] < 1e-5
    assert res["phases_run"] == 1 and res["phase_steps"] > 0 and res["lora_adapters"] > res["lora_sites"]


class PeekingModel(torch.nn.Module):
    """forward() adds a bonus to the target's logit; logits() stays honest (issue 16 finding 2)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg

    def logits(self, idx):
        return self.inner.logits(idx)

    def forward(self, idx, targets):
        z = self.inner.logits(idx).scatter_add(-1, targets[..., None], torch.full_like(targets[..., None], 5.0, dtype=torch.float32))
        return torch.nn.functional.cross_entropy(z.transpose(1, 2), targets, reduction="none")


@pytest.mark.parametrize("method", ["plain", "sliding", "ttt_sgd"])
def test_peeking_forward_is_flagged(vs, method):
    model = PeekingModel(_gpt())
    ecfg = EvalConfig(method=method, **RECIPE)
    rep = _check(lambda v, lg: evaluate(model, v, ecfg, CPU, 32, max_tokens=0, log=lg), vs, perturbations=0)
    assert not rep["ok"] and any("differ from -log p(target)" in p for p in rep["problems"])


def test_ttt_training_on_the_next_chunks_first_target_is_flagged(vs):
    def off_by_one(v, log):
        model = _gpt()
        n = usable_tokens(len(v), 32)
        plan = window_plan(n, 32, 16)
        chunk_of = (plan[:, 1] - 1) // 128
        opt, sums = MomentumSGD(list(model.parameters()), 0.9), ScoreSums(CPU)
        quiet = EventLog("quiet", n)  # its own updates are not logged where the checker listens
        for c in range(int(chunk_of[-1]) + 1):
            score_chunk(model, v, plan[chunk_of == c], 32, 8, sums, log, CPU)
            log.update([(c * 128, min((c + 1) * 128, n - 1) + 1)])  # the legal claim
            train_chunk(model, opt, v, c * 128, min((c + 1) * 128 + 1, n - 1) + 1, 32, 4, 1, 0.05, 1.0, quiet, CPU)
        return sums.result(0.0)
    rep = _check(off_by_one, vs)
    assert not rep["ok"] and rep["leaks"]
    assert any("not causal" in p for p in rep["problems"])
    assert all(q % 128 == 1 for q in rep["leaks"])  # exactly the chunks' first targets leak


def test_lora_ttt_that_steps_before_rescoring_is_flagged(vs):
    def step_then_score(v, log):
        model = _gpt()
        for p in model.parameters():
            p.requires_grad_(False)
        lora = LoRA(model, 4, 2, 16.0, CPU)
        sums = ScoreSums(CPU)
        spans = document_spans(v.tokens[:SLICE])
        for g in range(0, len(spans), 4):
            lora.reset(g)
            for step in batched_document_chunks(spans[g:g + 4], v.tokens, 8, 32, CPU):
                with lora.active(step.slots):
                    nats = model(step.x, step.y)
                    (nats * step.mask).sum().backward()
                    lora.adam_step(step.slots, 0.05, 0.99, 0.0)
                    with torch.no_grad():
                        nats = model(step.x, step.y)  # re-score after the step
                        logp = torch.log_softmax(model.logits(step.x)[step.mask].double(), -1)
                nb = torch.from_numpy(v.target_bytes[step.pos.numpy()])
                sums.add(nats, nb, step.mask)
                log.score(step.scored)  # the log calls stay in the legal order
                log.recorder.commit(step.pos[step.mask], logp, nats[step.mask])
                log.update(step.seen, scope="local")
        lora.remove()
        return sums.result(0.0)
    rep = _check(step_then_score, vs, perturbations=2)
    assert not rep["ok"] and any("not causal" in p for p in rep["problems"])


class SparseUnnormalized:
    """An expert summing to 1.5 at ~1.4 % of positions (issue 16 finding 4)."""
    name = "sparse"

    def probs(self, prev1, prev2, net_logp):
        p = torch.full_like(net_logp, 1.0 / net_logp.shape[-1], dtype=torch.float64)
        hit = ((prev1 * 7 + prev2) % 71 == 0)[:, None]
        return torch.where(hit, 1.5 * p, p)

    def update(self, prev1, prev2, target):
        pass


class SlightlyOver:
    """With prior 0.1 and eta 0, the mixture sums to 1 + 0.1 * 0.0009 = 1.00009 everywhere."""
    name = "over"

    def probs(self, prev1, prev2, net_logp):
        return torch.full_like(net_logp, 1.0009 / net_logp.shape[-1], dtype=torch.float64)

    def update(self, prev1, prev2, target):
        pass


@pytest.mark.parametrize("extra,eta,want", [(SparseUnnormalized, 1.0, "do not sum to 1"),
                                            (SlightlyOver, 0.0, "do not sum to 1")])
def test_unnormalized_mixtures_are_flagged(vs, extra, eta, want):
    model = _gpt()

    def run(v, log):
        experts = default_experts(512, CPU) + [extra()]
        return evaluate_mixture(model, v, 32, 16, 8, CPU, experts=experts, prior=[0.6, 0.1, 0.1, 0.1, 0.1],
                                eta=eta, log=log)
    rep = _check(run, vs, perturbations=0)  # the base run's own commits show it
    assert not rep["ok"] and any(want in p for p in rep["problems"]), rep["problems"]
    if extra is SlightlyOver:
        assert rep["max_norm_error"] == pytest.approx(9e-5, rel=1e-6)


def test_recorder_counts_every_commit_and_binds_the_score(vs):
    rec = Recorder(vs, 10, seed=0)
    logp = torch.log_softmax(torch.randn(4, 512, dtype=torch.float64), -1)
    tgt = torch.from_numpy(vs.tokens[[1, 2, 3, 3]].astype(np.int64))
    nats = -logp.gather(1, tgt[:, None]).squeeze(1)
    rec.commit(torch.tensor([1, 2, 3, 3]), logp, nats)
    probs = rec.problems({"val_bpb": 1.0})
    assert any("never committed (positions 4, 5, 6, 7, 8 ...)" in p for p in probs)
    assert any("committed more than once (positions 3)" in p for p in probs)
    assert any("reported val_bpb 1 !=" in p for p in probs)
    narrow = Recorder(vs, 10, seed=0, vocab=513)  # a distribution over fewer ids than the vocabulary
    narrow.commit(torch.tensor([1]), logp[:1], nats[:1])
    assert any("over 512 entries, not the vocabulary's 513" in p for p in narrow.problems({}))


def test_perturb_changes_every_later_token(vs):
    rng = np.random.default_rng(0)
    for keep in (True, False):
        out = perturb(vs.tokens, 100, rng, keep_bos=keep)
        assert np.array_equal(out[:100], vs.tokens[:100])
        bos = vs.tokens[100:] == 1
        moved = out[100:] != vs.tokens[100:]
        assert moved[~bos].all() and (np.array_equal(out[100:][bos], vs.tokens[100:][bos]) if keep else moved.all())
        assert set(np.unique(out)) <= set(np.unique(vs.tokens))


def _bigram_eval(leak: bool, noise: float):
    """A synthetic evaluator: p(. | tokens[p-1]) (+ tokens[p+1] if leak), jittered by `noise`."""
    table = torch.randn(512, 512, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def run(v, log):
        n = SLICE
        pos = torch.arange(1, n)
        toks = torch.from_numpy(v.tokens[:n].astype(np.int64))
        z = table[toks[pos - 1]] + (table[toks[(pos + 1).clamp(max=n - 1)]] if leak else 0) + noise * torch.rand(n - 1, 512, dtype=torch.float64)
        logp = torch.log_softmax(z, -1)
        nats = -logp.gather(1, toks[pos][:, None]).squeeze(1)
        log.score([(1, n)])
        log.recorder.commit(pos, logp, nats)
        nb = float(v.target_bytes[1:n].sum())
        return {"val_bpb": float(nats.sum()) / (math.log(2) * nb)}
    return run


def test_a_nondeterministic_evaluator_is_compared_within_its_noise(vs):
    calm = _check(_bigram_eval(leak=False, noise=1e-9), vs)
    assert calm["ok"], calm["problems"]
    assert not calm["deterministic"] and 0 < calm["noise"] < 1e-8
    leaky = _check(_bigram_eval(leak=True, noise=1e-9), vs)
    assert not leaky["ok"] and len(leaky["leaks"]) == 4  # the next token moves every distribution


def test_jitter_cannot_hide_a_leak(vs):
    """An evaluator that adds run-to-run noise larger than a leak's effect is refused outright."""
    noisy = _check(_bigram_eval(leak=False, noise=1e-3), vs)
    assert not noisy["ok"] and any("cannot tell a leak from noise" in p for p in noisy["problems"])
