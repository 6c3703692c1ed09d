import numpy as np
import pytest
import torch

from loopgolf.eval.bpb import evaluate_bpb, usable_tokens
from loopgolf.eval.lora import document_spans
from loopgolf.eval.bpb import ScoreSums, window_plan
from loopgolf.eval.sliding import evaluate_sliding, new_log
from loopgolf.eval.ttt import MomentumSGD, score_chunk, train_chunk, ttt_lora, ttt_sgd
from loopgolf.lab.legality import check_events


CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("flush_denormals")
MAX = 2000  # tokens of the tiny val stream used here


def _sliding_then_sgd_ttt(val, vs, small_model, lr, epochs):
    """(sliding-window result, score-first SGD TTT result, TTT event log) on one fresh model."""
    tokens, luts = val
    model = small_model()
    ref = evaluate_sliding(model, vs, 32, 16, 8, CPU, max_tokens=MAX)
    log = new_log("ttt_sgd", usable_tokens(len(tokens), 32, MAX))
    res = ttt_sgd(model, vs, 32, 16, CPU, chunk_tokens=256, lr=lr, epochs=epochs,
                  batch_seqs=8, max_tokens=MAX, log=log)
    return ref, res, log


def test_sgd_with_lr_zero_equals_sliding_eval(val, vs, small_model):
    ref, res, log = _sliding_then_sgd_ttt(val, vs, small_model, lr=0.0, epochs=1)
    assert res["val_tokens"] == ref["val_tokens"] and res["val_bytes"] == ref["val_bytes"]
    assert res["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-6)
    rep = check_events(log, log.n_tokens)
    assert rep["ok"], rep["problems"]
    assert rep["updates"] == res["updates"] > 0


def test_sgd_ttt_learns_and_stays_legal(val, vs, small_model):
    ref, res, log = _sliding_then_sgd_ttt(val, vs, small_model, lr=0.05, epochs=2)
    assert res["val_loss"] < ref["val_loss"] - 0.05
    assert check_events(log, log.n_tokens)["ok"]
    # the last chunk was never trained on: no update read a position past the last chunk's start
    last_start = (res["chunks"] - 1) * 256
    assert max(hi for e in log.events if e["kind"] == "update" for _, hi in e["ranges"]) <= last_start + 1


def test_train_then_score_is_flagged(val, vs, small_model):
    """The illegal order (PR #1376 cluster): adapt on a chunk, then score it."""
    tokens, luts = val
    model = small_model()
    n = usable_tokens(len(tokens), 32, MAX)
    plan = window_plan(n, 32, 16)
    chunk_of = (plan[:, 1] - 1) // 256
    log = new_log("illegal", n)
    opt = MomentumSGD(list(model.parameters()), 0.9)
    sums = ScoreSums(CPU)
    for c in range(int(chunk_of[-1]) + 1):
        train_chunk(model, opt, vs, c * 256, min((c + 1) * 256, n - 1) + 1, 32, 8, 1, 0.01, 1.0, log, CPU)
        score_chunk(model, vs, plan[chunk_of == c], 32, 8, sums, log, CPU)
    rep = check_events(log, log.n_tokens)
    assert not rep["ok"] and not rep["score_first"]
    assert any("train-then-score" in p for p in rep["problems"])


def test_document_spans_tile_the_targets():
    toks = np.array([1, 5, 6, 1, 7, 1, 8, 9, 9], dtype=np.uint16)
    assert document_spans(toks) == [(0, 3), (3, 5), (5, 8)]
    assert document_spans(np.array([4, 5, 1, 6], dtype=np.uint16)) == [(0, 2), (2, 3)]


def test_frozen_lora_counts_every_target_once(val, vs, small_model):
    tokens, luts = val
    model = small_model()
    plain = evaluate_bpb(model, tokens, luts, 32, 8, CPU, max_tokens=600)
    log = new_log("ttt_lora", usable_tokens(len(tokens), 32, 600))
    frozen = ttt_lora(model, vs, CPU, context=32, chunk_len=8, rank=2, lr=0.0,
                      docs_per_batch=16, max_tokens=600, log=log)
    assert frozen["val_tokens"] == plain["val_tokens"] and frozen["val_bytes"] == plain["val_bytes"]
    rep = check_events(log, log.n_tokens)
    assert rep["ok"], rep["problems"]


def test_lora_ttt_with_a_phase_is_legal(val, vs, small_model):
    tokens, luts = val
    model = small_model()
    log = new_log("ttt_lora", usable_tokens(len(tokens), 32, 1200))
    before = [p.detach().clone() for p in model.parameters()]
    res = ttt_lora(model, vs, CPU, context=32, chunk_len=8, rank=2, lr=0.01,
                   docs_per_batch=8, phases=1, max_tokens=1200, log=log)
    rep = check_events(log, log.n_tokens)
    assert rep["ok"], rep["problems"]
    assert res["updates"] > 0 and res["val_tokens"] == rep["targets"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the phase ran
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())  # hooks removed


def test_one_lora_phase_runs_and_is_reported_truthfully(vs, small_model):
    """Issue 16 finding 5: with one round, phases=1 ran no phase step (round(0.5) == 0) yet reported 1."""
    import math

    n = usable_tokens(len(vs), 32, 600)
    docs = len(document_spans(vs.tokens[:n]))
    res = ttt_lora(small_model(), vs, CPU, context=32, chunk_len=8, rank=2, lr=0.01,
                   docs_per_batch=math.ceil(docs / 2), phases=1, phase_batch_seqs=4, max_tokens=600)
    assert res["batches"] == 2 and res["phases"] == res["phases_run"] == 1 and res["phase_steps"] > 0
    with pytest.raises(ValueError, match="1 phase\\(s\\) need at least 2 document batches"):
        ttt_lora(small_model(), vs, CPU, context=32, chunk_len=8, rank=2, docs_per_batch=docs, phases=1,
                 max_tokens=600)


def test_update_batches_are_global_sequences(vs, small_model):
    """Each SGD update reads a fixed number of sequences of the global stream (not x world size)."""
    log = new_log("ttt_sgd", usable_tokens(len(vs), 32, MAX))
    ttt_sgd(small_model(), vs, 32, 16, CPU, chunk_tokens=256, lr=0.01, epochs=1, train_batch_seqs=3,
            max_tokens=MAX, log=log)
    ups = [e for e in log.events if e["kind"] == "update"]
    assert ups[0]["ranges"] == [[0, 33], [32, 65], [64, 97]]  # 3 sequences of 32 targets
    assert all(len(e["ranges"]) <= 3 for e in ups)


def test_sgd_ttt_freezes_the_first_blocks(vs, small_model):
    """PR #927's TTT_FREEZE_BLOCKS: block 0 keeps its weights, block 1 and the rest adapt."""
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = ttt_sgd(model, vs, 32, 16, CPU, chunk_tokens=256, lr=0.05, epochs=1, batch_seqs=8,
                  max_tokens=MAX, freeze_blocks=1)
    block0 = [n for n in before if n.startswith("blocks.0.")]
    assert block0 and res["frozen_params"] == sum(before[n].numel() for n in block0)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in block0)
    assert any(not torch.equal(after[n], before[n]) for n in before if n.startswith("blocks.1."))
    assert not torch.equal(after["tok_emb.weight"], before["tok_emb.weight"])
    assert all(p.requires_grad for p in model.parameters())  # restored after TTT
    with pytest.raises(ValueError, match="sgd_freeze_blocks"):
        ttt_sgd(torch.nn.Linear(4, 4), vs, 32, 16, CPU, max_tokens=MAX, freeze_blocks=1)


# ---- the frontier rows: adapter targets, per-visit adapters, prefix phases, short-document chunks ----

def test_phase_plan_known_answer():
    from loopgolf.eval.ttt import phase_boundaries, phase_plan

    # PR #1855: 3 phases in a 2500-document prefix at 833 / 1666 / 2500 documents, 64 per batch
    assert phase_plan(50_000, 64, 3, 2500) == [(14, 833), (27, 1666), (40, 2500)]
    assert phase_plan(50_000, 64, 1, 2500) == [(40, 2500)]  # #2014 / #2135: one phase
    assert phase_plan(30, 4, 2, 100) == [(4, 15), (8, 30)]  # the prefix is capped at the stream
    # prefix 0: the equal slices of the batches, as before
    assert [b for b, _ in phase_plan(40, 4, 3)] == phase_boundaries(10, 3) == [2, 5, 8]
    assert phase_plan(38, 4, 1) == [(5, 20)]


def _doc_isolated_gpt():
    """One block looped twice; attention never crosses a BOS, so a target's loss depends only on its
    document's prefix whenever the window holds the whole document (documents here <= 174 tokens)."""
    from loopgolf.config import ModelConfig
    from loopgolf.model.gpt import GPT

    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=512, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="1x2",
                        doc_isolated_attn=True))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


def _per_position_nats(vs, n, run):
    from loopgolf.lab.legality import Recorder

    rec = Recorder(vs, n, seed=0)
    log = new_log("x", n)
    log.recorder = rec
    res = run(log)
    return res, rec.nats.numpy(), log


FRONTIER_RECIPES = {
    "all-linears": dict(phases=1),
    "pr1855": dict(targets="q,k,v,o,mlp,head", per_visit=True, phases=3, phase_prefix_docs=8),
    "pr2014": dict(targets="k,o,mlp,head", per_visit=True, phases=1, phase_prefix_docs=8,
                   short_chunks=((64, 8), (128, 16))),
}  # #2135's "q,v,o,mlp,head" differs from pr1855 only in the sites (test_lora_targets.py)


@pytest.mark.parametrize("recipe", sorted(FRONTIER_RECIPES))
def test_lora_ttt_with_lr_zero_equals_the_sliding_eval(vs, recipe):
    """lr = 0 and phase lr = 0: the adapters stay the identity (B = 0) and the phases leave the base
    weights as they are, so every target's nats are the sliding eval's (context 256, stride 64:
    each window holds its target's whole document, as LoRA TTT's document windows do)."""
    ctx, max_tok = 256, 1200
    model = _doc_isolated_gpt()
    n = usable_tokens(len(vs), ctx, max_tok)
    ref, ref_nats, _ = _per_position_nats(vs, n, lambda lg: evaluate_sliding(model, vs, ctx, 64, 4, CPU,
                                                                              max_tokens=max_tok, log=lg))
    res, nats, log = _per_position_nats(vs, n, lambda lg: ttt_lora(
        model, vs, CPU, context=ctx, chunk_len=48, rank=2, lr=0.0, phase_lr=0.0, docs_per_batch=4,
        phase_batch_seqs=4, max_tokens=max_tok, log=lg, **FRONTIER_RECIPES[recipe]))
    assert res["val_tokens"] == ref["val_tokens"] == n - 1 and res["val_bytes"] == ref["val_bytes"]
    np.testing.assert_allclose(nats[1:], ref_nats[1:], rtol=1e-5, atol=1e-5)
    assert res["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-6)
    assert res["phases_run"] == FRONTIER_RECIPES[recipe]["phases"] and res["phase_steps"] > 0
    rep = check_events(log, n)
    assert rep["ok"] and rep["score_first"], rep["problems"]


def test_frontier_lora_recipes_learn_score_first_and_phase_on_the_prefix(vs):
    """With a real lr the recipes change the score, the log replays as score-first, and a prefix
    phase reads only the first prefix documents."""
    ctx, max_tok, prefix = 64, 800, 4
    n = usable_tokens(len(vs), ctx, max_tok)
    spans = document_spans(vs.tokens[:n])
    base = evaluate_sliding(_doc_isolated_gpt(), vs, ctx, 64, 4, CPU, max_tokens=max_tok)
    for recipe in ("pr1855", "pr2014"):
        log = new_log("ttt_lora", n)
        kw = dict(FRONTIER_RECIPES[recipe], phase_prefix_docs=prefix)
        res = ttt_lora(_doc_isolated_gpt(), vs, CPU, context=ctx, chunk_len=16, rank=2, lr=0.01,
                       docs_per_batch=2, phase_batch_seqs=2, max_tokens=max_tok, log=log, **kw)
        rep = check_events(log, n)
        assert rep["ok"] and rep["score_first"], rep["problems"]
        assert res["val_loss"] != pytest.approx(base["val_loss"], rel=1e-4)
        assert res["lora_adapters"] > res["lora_sites"]  # per visit: two of each (one block, two visits)
        globals_ = [e for e in log.events if e["kind"] == "update" and e.get("scope", "global") == "global"]
        assert globals_ and max(hi for e in globals_ for _, hi in e["ranges"]) <= spans[prefix - 1][1] + 1
    assert res["short_chunked"] == sum(1 for s, e in spans if e - s + 1 <= 64)  # chunk 8, not 16
