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
    rep = check_events([a, b])
    assert rep["ok"] and rep["scored"] == rep["targets"] == 8 and rep["updates"] == 1


def test_flags_double_gap_and_train_then_score():
    log = EventLog("bad", 10)
    log.score([(1, 4)])
    log.update([(3, 8)])
    log.score([(3, 6)])  # 3 twice; 3, 4, 5 seen by the update before being scored
    rep = check_events(log)
    assert not rep["ok"] and not rep["score_first"]
    text = " | ".join(rep["problems"])
    assert "never scored" in text and "more than once" in text and "train-then-score" in text
    assert "position 3 scored at version 1 after update 0" in text
    assert "never scored (positions 6, 7, 8, 9)" in text


def test_cross_rank_violation_is_caught_in_lockstep_logs():
    a, b = EventLog("x", 5, rank=0), EventLog("x", 5, rank=1)
    a.update([(0, 5)]); b.step_without_update()  # rank 0 trains on everything first
    b.score([(1, 5)])
    assert not check_events([a, b])["score_first"]


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
