"""Per-document LoRA: document spans, window padding, the chunk schedule, and the hooked adapter."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from loopgolf.data.tokenizer import BOS_ID
from loopgolf.eval.lora import LoRA, batched_document_chunks, document_spans, pad_windows

CPU = torch.device("cpu")


# ---- document_spans ----

def test_spans_split_at_bos_and_tile_all_targets() -> None:
    b = BOS_ID
    tokens = np.array([b, 5, 6, b, 7, 8, 9, b, 4])
    spans = document_spans(tokens)
    assert spans == [(0, 3), (3, 7), (7, 8)]
    targets = [p for s, e in spans for p in range(s + 1, e + 1)]
    assert targets == list(range(1, len(tokens)))


def test_spans_without_leading_bos_and_with_trailing_bos() -> None:
    b = BOS_ID
    assert document_spans(np.array([5, b, 6])) == [(0, 1), (1, 2)]
    assert document_spans(np.array([b, 4, b])) == [(0, 2)]  # a final BOS has no targets of its own


# ---- pad_windows ----

def test_pad_windows_known_answer() -> None:
    tokens = np.arange(10, 20)
    x, y, mask, pos = pad_windows(tokens, [(0, 3, 5), (2, 6, 7)], CPU)
    assert x.tolist() == [[10, 11, 12, 13], [12, 13, 14, 15]]
    assert y.tolist() == [[11, 12, 13, 14], [13, 14, 15, 16]]
    assert pos.tolist() == [[1, 2, 3, 4], [3, 4, 5, 6]]
    assert mask.tolist() == [[False, False, True, True], [False, False, False, True]]
    assert x.dtype == y.dtype == pos.dtype == torch.int64 and mask.dtype == torch.bool


def test_pad_windows_right_pads_with_zeros() -> None:
    tokens = np.arange(10, 20)
    x, y, mask, pos = pad_windows(tokens, [(0, 1, 4), (5, 6, 7)], CPU)
    assert x.tolist() == [[10, 11, 12], [15, 0, 0]]
    assert y.tolist() == [[11, 12, 13], [16, 0, 0]]
    assert pos.tolist() == [[1, 2, 3], [6, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


# ---- batched_document_chunks ----

def test_chunk_schedule_known_answer() -> None:
    tokens = np.arange(100, 108)
    steps = list(batched_document_chunks([(0, 5), (5, 7)], tokens, chunk_len=2, context=3,
                                         device=CPU))
    assert [s.slots.tolist() for s in steps] == [[0, 1], [0], [0]]
    assert [s.train_rows.tolist() for s in steps] == [[True, False], [True], [False]]
    assert [s.scored for s in steps] == [[(1, 3), (6, 8)], [(3, 5)], [(5, 6)]]
    assert [s.seen for s in steps] == [[(0, 3)], [(1, 5)], []]
    # step 1: window (1, 3, 5) -> inputs tokens[1:4], context capped at 3 tokens
    assert steps[1].x.tolist() == [[101, 102, 103]] and steps[1].y.tolist() == [[102, 103, 104]]
    assert steps[1].mask.tolist() == [[False, True, True]]


def test_chunk_schedule_scores_every_target_once_within_its_document() -> None:
    b = BOS_ID
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 50, size=61)
    tokens[[0, 7, 8, 30, 45]] = b
    spans = document_spans(tokens)
    scored = []
    for step in batched_document_chunks(spans, tokens, chunk_len=4, context=6, device=CPU):
        for r, slot in enumerate(step.slots.tolist()):
            s, e = spans[slot]
            p = step.pos[r][step.mask[r]].tolist()
            assert all(s < q <= e for q in p)
            assert step.y[r][step.mask[r]].tolist() == tokens[p].tolist()
            width = int((step.pos[r] > 0).sum())
            assert width <= 6 and step.pos[r][0] - 1 >= s  # context never crosses the BOS
            scored += p
    assert sorted(scored) == list(range(1, len(tokens)))


def test_chunk_schedule_empty() -> None:
    assert list(batched_document_chunks([], np.array([1]), 4, 4, CPU)) == []


# ---- LoRA adapter ----

def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def batch(b: int = 3, t: int = 5) -> torch.Tensor:
    return torch.randn(b, t, 4, generator=torch.Generator().manual_seed(1))


def test_reset_gives_zero_delta_and_bounded_deterministic_a() -> None:
    model = tiny_model()
    x = batch()
    base = model(x)
    lora = LoRA(model, slots=3, rank=2, alpha=4.0, device=CPU)
    assert len(lora.modules) == 2 and lora.scale == 2.0
    assert [tuple(a.shape) for a in lora.A] == [(3, 2, 4), (3, 2, 6)]
    assert [tuple(b.shape) for b in lora.B] == [(3, 6, 2), (3, 3, 2)]
    lora.reset(7)
    for a in lora.A:
        assert a.abs().max() > 0 and a.abs().max() <= 1 / math.sqrt(a.shape[-1])
    a7 = [a.clone() for a in lora.A]
    with lora.active(torch.tensor([0, 1, 2])):
        assert torch.equal(model(x), base)  # B = 0: the adapter is the identity
    lora.reset(8)
    assert not torch.equal(lora.A[0], a7[0])
    lora.reset(7)
    assert all(torch.equal(a, b) for a, b in zip(lora.A, a7))
    with torch.no_grad():
        lora.B[0].fill_(1.0)
    lora.reset(9, keep_a=True)
    assert all(torch.equal(a, b) for a, b in zip(lora.A, a7)) and lora.B[0].abs().sum() == 0


def test_hook_adds_scaled_low_rank_delta_per_slot() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x = batch(2, 5)
    base = lin(x)
    lora = LoRA(lin, slots=3, rank=2, alpha=1.0, device=CPU)
    lora.reset(0)
    with torch.no_grad():
        lora.B[0][2].copy_(torch.randn(3, 2))
    with torch.no_grad(), lora.active(torch.tensor([0, 2])):
        out = lin(x)
    assert torch.equal(out[0], base[0])  # slot 0 still has B = 0
    want = base[1] + 0.5 * x[1] @ lora.A[0][2].T @ lora.B[0][2].T
    torch.testing.assert_close(out[1], want, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(lin(x), base)  # outside active(): no adapter


def test_adam_step_updates_only_the_given_slots_with_a_sign_step() -> None:
    model = tiny_model()
    x = batch()
    lora = LoRA(model, slots=3, rank=2, alpha=2.0, device=CPU)
    lora.reset(0)
    before = [t.clone() for t in lora.tensors]
    with lora.active(torch.tensor([0, 1, 2])):
        model(x).square().sum().backward()
    grads = [t.grad.clone() for t in lora.tensors]
    lr, wd = 0.01, 0.5
    lora.adam_step(torch.tensor([1]), lr=lr, beta2=0.99, weight_decay=wd)
    assert lora.steps.tolist() == [0.0, 1.0, 0.0]
    assert all(t.grad is None for t in lora.tensors)
    n = len(lora.A)
    for k, (t, t0, g) in enumerate(zip(lora.tensors, before, grads)):
        assert torch.equal(t[0], t0[0]) and torch.equal(t[2], t0[2])  # inactive slots untouched
        # first Adam step, beta1 = 0: g / (sqrt(g^2) + eps) = sign(g) up to eps
        want = t0[1] * (1 - lr * wd) - lr * g[1] / (g[1].abs() + lora.eps)
        torch.testing.assert_close(t[1], want, rtol=1e-6, atol=1e-7)
        if k < n:  # dL/dA = 0 while B = 0: A only decays
            assert g.abs().sum() == 0
        else:
            assert g[1].abs().sum() > 0 and not torch.equal(t[1], t0[1])


def test_remove_restores_the_model_outputs_exactly() -> None:
    model = tiny_model()
    x = batch()
    base = model(x)
    lora = LoRA(model, slots=3, rank=2, alpha=2.0, device=CPU)
    lora.reset(0)
    with torch.no_grad():
        for b in lora.B:
            b.normal_()
    slots = torch.tensor([0, 1, 2])
    with torch.no_grad(), lora.active(slots):
        assert not torch.allclose(model(x), base)
    lora.remove()
    assert lora.handles == []
    with torch.no_grad(), lora.active(slots):
        assert torch.equal(model(x), base)


def test_bad_shapes_and_models_are_refused() -> None:
    model = tiny_model()
    lora = LoRA(model, slots=2, rank=1, alpha=1.0, device=CPU)
    lora.reset(0)
    with lora.active(torch.tensor([0, 1])), pytest.raises(ValueError, match="is not"):
        model(torch.randn(2, 4))  # 2-D input: no per-row slot
    with lora.active(torch.tensor([0])), pytest.raises(ValueError, match=r"batch=1"):
        model(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="no nn.Linear"):
        LoRA(nn.Sequential(nn.ReLU()), slots=1, rank=1, alpha=1.0, device=CPU)


# ---- per-visit adapters, the head adapter, short-document chunks ----

class Thrice(nn.Module):
    """One Linear run three times per forward (a block looped three times)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(self.lin(self.lin(x)))

    def logits(self, idx):  # count_visits probes through logits(idx)
        return self(torch.zeros(*idx.shape, 4))


def test_per_visit_adapter_k_runs_on_the_kth_call() -> None:
    model = Thrice()
    x = batch(2, 5)
    lora = LoRA(model, slots=2, rank=2, alpha=2.0, device=CPU, per_visit=True)
    assert lora.index == [[0, 1, 2]] and len(lora.A) == 3
    lora.reset(0)
    with torch.no_grad():
        lora.B[1].normal_(generator=torch.Generator().manual_seed(3))  # visit 1 only
    slots = torch.tensor([1, 0])
    with torch.no_grad(), lora.active(slots):
        out = model(x)
        with pytest.raises(RuntimeError, match="ran 4 times in one forward"):
            model(x)  # a second forward in the same active(): the counter would run past 3
    lin = model.lin
    with torch.no_grad():
        y1 = lin(x)
        a, b = lora.A[1][slots], lora.B[1][slots]
        y2 = lin(y1) + 1.0 * torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", y1, a), b)
        want = lin(y2)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    shared = LoRA(Thrice(), slots=2, rank=2, alpha=2.0, device=CPU)
    assert shared.index == [[0]] and len(shared.A) == 1  # the default: one adapter for every visit


def test_per_visit_on_a_looped_gpt_sizes_one_adapter_per_virtual_layer() -> None:
    from loopgolf.config import ModelConfig
    from loopgolf.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, dim=16, n_heads=2, n_kv_heads=1, mlp_hidden=32, plan="3:1-1x2"))
    lora = LoRA(model, slots=2, rank=2, alpha=2.0, device=CPU, targets="q,k,v,o,mlp,head", per_visit=True)
    # 4 virtual layers x 5 block sites + the head (PR #1855: num_slots sets of q, k, v, o, mlp)
    assert len(lora.A) == 4 * 5 + 1 and lora.head == 20
    assert [len(i) for i in lora.index] == [1] * 5 + [2] * 5 + [1] * 5


def test_head_adapter_adds_to_the_logits_before_the_cap() -> None:
    from loopgolf.config import ModelConfig
    from loopgolf.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, dim=16, n_heads=2, n_kv_heads=1, mlp_hidden=32, plan="2")).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    lora = LoRA(model, slots=3, rank=2, alpha=4.0, device=CPU, targets="head")
    assert lora.modules == [] and lora.head == 0 and tuple(lora.B[0].shape) == (3, 64, 2)
    lora.reset(0)
    slots = torch.tensor([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(lora.nll(x, y, slots), model(x, y), rtol=1e-6, atol=1e-6)  # B = 0
        torch.testing.assert_close(lora.logits(x, slots), model.logits(x), rtol=1e-6, atol=1e-6)
        lora.B[0].normal_()
        h = model.hidden(x)
        z = h @ model.tok_emb.weight.T + 2.0 * torch.einsum("btr,bor->bto", h @ lora.A[0][slots].transpose(1, 2),
                                                           lora.B[0][slots])
        want = 30.0 * torch.tanh(z / 30.0)  # model.logit_softcap 30
        got = lora.logits(x, slots)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        nll = lora.nll(x, y, slots)
        torch.testing.assert_close(nll, -torch.log_softmax(got, -1).gather(-1, y[..., None])[..., 0])
        assert not torch.allclose(nll, model(x, y))


def test_chunk_lengths_known_answer() -> None:
    from loopgolf.eval.lora import chunk_lengths

    spans = [(0, 5), (5, 300), (300, 3000), (3000, 3001)]  # 6, 296, 2701 and 2 tokens with both BOS
    assert chunk_lengths(spans, 48) == [48, 48, 48, 48]
    assert chunk_lengths(spans, 48, ((256, 8), (2000, 24))) == [8, 24, 48, 8]
    assert chunk_lengths([(0, 255)], 48, ((256, 8),)) == [8] and chunk_lengths([(0, 256)], 48, ((256, 8),)) == [48]


def test_chunk_schedule_with_one_length_per_document() -> None:
    tokens = np.arange(100, 112)
    steps = list(batched_document_chunks([(0, 5), (5, 11)], tokens, chunk_len=[2, 4], context=8, device=CPU))
    assert [s.slots.tolist() for s in steps] == [[0, 1], [0, 1], [0]]
    assert [s.scored for s in steps] == [[(1, 3), (6, 10)], [(3, 5), (10, 12)], [(5, 6)]]
    assert [s.train_rows.tolist() for s in steps] == [[True, True], [True, False], [False]]
