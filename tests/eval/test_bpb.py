import math

import numpy as np
import torch

from loopgolf.config import ModelConfig
from loopgolf.data.luts import build_byte_luts
from loopgolf.data.tokenizer import load_tokenizer
from loopgolf.eval.bpb import evaluate_bpb, usable_tokens
from loopgolf.model.gpt import GPT


def _model(vocab):
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=vocab, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="2"))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


def test_bpb_against_hand_counted_bytes(tiny_sp_model, make_docs):
    sp = load_tokenizer(tiny_sp_model)
    docs = make_docs(6, seed=7)
    stream = []
    for d in docs:
        stream += [1] + sp.encode(d)
    stream.append(1)  # the next document's BOS: a target with loss but 0 bytes
    tokens = np.array(stream, dtype=np.uint16)
    seq_len = len(tokens) - 1  # one window covering every document exactly
    vocab = 512
    model = _model(vocab)
    luts = build_byte_luts(sp, vocab).to_torch(torch.device("cpu"))
    res = evaluate_bpb(model, tokens, luts, seq_len, batch_seqs=4, device=torch.device("cpu"))

    hand_bytes = sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)
    assert res["val_bytes"] == hand_bytes
    x = torch.tensor(stream[:-1])[None].long()
    y = torch.tensor(stream[1:])[None].long()
    nats = torch.nn.functional.cross_entropy(model.logits(x)[0].double(), y[0], reduction="sum").item()
    assert res["val_tokens"] == len(stream) - 1
    assert res["val_loss"] == __import__("pytest").approx(nats / (len(stream) - 1), rel=1e-5)
    assert res["val_bpb"] == __import__("pytest").approx(nats / (math.log(2) * hand_bytes), rel=1e-5)


def test_windows_and_batching_do_not_change_the_score(tiny_shards):
    sp = load_tokenizer(tiny_shards["tokenizer"])
    from loopgolf.data.shards import load_shard
    tokens = np.asarray(load_shard(tiny_shards["val"][0]))
    model = _model(512)
    luts = build_byte_luts(sp, 512).to_torch(torch.device("cpu"))
    a = evaluate_bpb(model, tokens, luts, 32, batch_seqs=3, device=torch.device("cpu"))
    b = evaluate_bpb(model, tokens, luts, 32, batch_seqs=64, device=torch.device("cpu"))
    assert a["val_bpb"] == b["val_bpb"] or abs(a["val_bpb"] - b["val_bpb"]) < 1e-9
    assert a["val_tokens"] == usable_tokens(len(tokens), 32) - 1


def test_usable_tokens_truncates_like_the_baseline():
    assert usable_tokens(1000, 100) == 901
    assert usable_tokens(1001, 100) == 1001
    assert usable_tokens(10_000, 100, max_tokens=250) == 201


def test_byte_sidecar_replaces_the_tables(tiny_shards):
    import pytest

    from loopgolf.data.shards import load_shard
    from loopgolf.data.transform import IdentityTransform, piece_bytes_table, token_byte_counts

    sp = load_tokenizer(tiny_shards["tokenizer"])
    tokens = np.asarray(load_shard(tiny_shards["val"][0]))
    luts = build_byte_luts(sp, 512).to_torch(torch.device("cpu"))
    table = piece_bytes_table(sp)
    bos = np.flatnonzero(tokens == 1).tolist() + [len(tokens)]
    side = np.concatenate([token_byte_counts(tokens[a + 1:b].tolist(), table, IdentityTransform())
                           for a, b in zip(bos[:-1], bos[1:])])
    model = _model(512)
    ref = evaluate_bpb(model, tokens, luts, 32, batch_seqs=8, device=torch.device("cpu"), max_tokens=1024)
    got = evaluate_bpb(model, tokens, luts, 32, batch_seqs=8, device=torch.device("cpu"), max_tokens=1024, byte_sidecar=side)
    assert got["val_bytes"] == ref["val_bytes"] and got["val_bpb"] == ref["val_bpb"]
    doubled = evaluate_bpb(model, tokens, luts, 32, batch_seqs=8, device=torch.device("cpu"), max_tokens=1024,
                           byte_sidecar=2 * side)
    assert doubled["val_bytes"] == 2 * ref["val_bytes"]
    assert doubled["val_bpb"] == pytest.approx(ref["val_bpb"] / 2, rel=1e-12)
    with pytest.raises(ValueError, match="byte sidecar has 3 entries"):
        evaluate_bpb(model, tokens, luts, 32, batch_seqs=8, device=torch.device("cpu"), max_tokens=1024, byte_sidecar=side[:3])
