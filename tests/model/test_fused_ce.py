"""The fused softcapped CE equals the plain softcap + F.cross_entropy path: per-token loss and the
gradients of hidden states, head weight and AsymLogit caps, with chunks that do not divide N, in
float64 (gradcheck), float32 (tight) and bf16 autocast (loose), and under torch.compile without
saving any N x V tensor."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from loopgolf.model.fused_ce import IGNORE_INDEX, chunk_rows, fused_softcapped_nll

N, V, D = 1037, 77, 24  # N is no multiple of the chunk (rows=128 below)


def _data(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype)
    w = torch.randn(V, D, generator=g, dtype=dtype) * 2.0  # |z| up to ~30: the cap bends
    t = torch.randint(0, V, (N,), generator=g)
    grad = torch.rand(N, generator=g, dtype=dtype)  # per-token upstream gradient, not all ones
    return h, w, t, grad


def _plain(h, w, t, cap_pos, cap_neg=None):
    z = F.linear(h, w.to(h.dtype)).float()
    if cap_neg is not None:
        z = torch.where(z > 0, cap_pos * torch.tanh(z / cap_pos), cap_neg * torch.tanh(z / cap_neg))
    elif cap_pos:
        z = cap_pos * torch.tanh(z / cap_pos)
    return F.cross_entropy(z, t, reduction="none")


def _grads(fn, h, w, grad, *caps):
    leaves = [h.detach().requires_grad_(), w.detach().requires_grad_()]
    leaves += [c.detach().clone().requires_grad_() for c in caps]
    nll = fn(*leaves[:2], *leaves[2:])
    return [nll.detach()] + list(torch.autograd.grad((nll * grad).sum(), leaves))


def test_known_answer_at_zero_hidden_states():
    """h = 0: every logit is 0, so nll = ln V; dnll/dh = mean_v w_v - w_t, dnll/dW = 0."""
    h = torch.zeros(5, 3, requires_grad=True)
    w = torch.arange(12.0).view(4, 3).requires_grad_()
    t = torch.tensor([0, 1, 2, 3, 1])
    nll = fused_softcapped_nll(h, w, t, 30.0, rows=2)
    assert torch.allclose(nll, torch.full((5,), math.log(4)))
    gh, gw = torch.autograd.grad(nll.sum(), (h, w))
    assert torch.allclose(gh, w.detach().mean(0) - w.detach()[t])
    assert torch.equal(gw, torch.zeros(4, 3))


@pytest.mark.parametrize("asym", [False, True])
def test_gradcheck_float64(asym):
    h, w, t, _ = _data(torch.float64)
    h, t = h[:40].requires_grad_(), t[:40]
    w = w.requires_grad_()
    caps = ((torch.tensor(7.0, dtype=torch.float64, requires_grad=True),
             torch.tensor(4.0, dtype=torch.float64, requires_grad=True)) if asym else (5.0, None))
    inputs = (h, w) + (caps if asym else ())

    def fn(h, w, *c):
        return fused_softcapped_nll(h, w, t, *(c if asym else caps), rows=16)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("cap", [30.0, 0.0])  # 0 = no cap
def test_float32_equals_the_plain_path(cap):
    h, w, t, grad = _data()
    want = _grads(lambda h, w: _plain(h, w, t, cap), h, w, grad)
    got = _grads(lambda h, w: fused_softcapped_nll(h, w, t, cap, rows=128), h, w, grad)
    for a, b in zip(got, want):  # loss, dh, dW
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def test_asymmetric_caps_equal_the_plain_path_and_get_their_gradients():
    h, w, t, grad = _data()
    caps = (torch.tensor(20.0), torch.tensor(9.0))
    want = _grads(lambda h, w, p, n: _plain(h, w, t, p, n), h, w, grad, *caps)
    got = _grads(lambda h, w, p, n: fused_softcapped_nll(h, w, t, p, n, rows=128), h, w, grad, *caps)
    for a, b in zip(got, want):  # loss, dh, dW, dc+, dc-
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    assert got[3].abs() > 1 and got[4].abs() > 1  # the caps really bend these logits


def test_ignored_targets_cost_nothing_as_in_f_cross_entropy():
    h, w, t, grad = _data()
    t = t.clone()
    t[::5] = IGNORE_INDEX
    want = _grads(lambda h, w: _plain(h, w, t, 30.0), h, w, grad)
    got = _grads(lambda h, w: fused_softcapped_nll(h, w, t, 30.0, rows=100), h, w, grad)
    assert torch.equal(got[0][::5], torch.zeros_like(got[0][::5]))
    assert torch.equal(got[1][::5], torch.zeros_like(got[1][::5]))  # no gradient into ignored rows
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_matches_the_plain_path_loosely():
    """bf16 matmuls in both; fp32 softmax in both. The fused dW sums chunks in fp32 (the plain
    path's one bf16 matmul rounds once), so the weight gradient agrees to bf16 precision only."""
    h, w, t, grad = _data()
    hb = h.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _grads(lambda h, w: _plain(h, w, t, 30.0), hb, w, grad)
        got = _grads(lambda h, w: fused_softcapped_nll(h, w, t, 30.0, rows=128), hb, w, grad)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-5)  # same bf16 logits, fp32 softmax
    for a, b in zip(got[1:], want[1:]):
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert rel < 1e-2, rel


def test_leading_dims_and_the_default_chunk():
    h, w, t, _ = _data()
    nll = fused_softcapped_nll(h[:1020].view(4, 255, D), w, t[:1020].view(4, 255), 30.0)
    assert nll.shape == (4, 255)
    assert torch.allclose(nll.view(-1), _plain(h[:1020], w, t[:1020], 30.0), atol=1e-5)
    assert chunk_rows(1024) == 8192 and chunk_rows(8192) == 1024 and chunk_rows(2) == 32768


def _compiled_case(backend: str, asym: bool):
    torch._dynamo.reset()
    h, w, t, grad = _data()
    h, w, t, grad = h[:512], w[:64], t[:512] % 64, grad[:512]
    caps = (torch.tensor(20.0), torch.tensor(9.0)) if asym else ()

    def fn(h, w, *c):
        return fused_softcapped_nll(h, w, t, *(c or (30.0,)), rows=128)

    saved = []
    compiled = torch.compile(fn, dynamic=False, backend=backend)
    leaves = [x.clone().requires_grad_() for x in (h, w, *caps)]
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(tuple(x.shape)) or x, lambda x: x):
        out = compiled(*leaves)
    assert saved and not [s for s in saved if len(s) == 2 and s[1] == 64], saved  # no (rows, V)
    got = [out.detach()] + list(torch.autograd.grad((out * grad).sum(), leaves))
    for a, b in zip(got, _grads(fn, h, w, grad, *caps)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("asym", [False, True])
def test_torch_compile_keeps_no_n_by_v_tensor_for_backward(asym):
    """AOTAutograd would CSE a backward matmul identical to the forward's and the min-cut
    partitioner would save every chunk's logits (module docstring; the partition backend below
    reproduces it when backward uses F.linear). Saved: h, W, targets and per-row values only."""
    _compiled_case("aot_eager_decomp_partition", asym)


@pytest.mark.slow
def test_inductor_compiles_it_to_the_same_numbers():
    _compiled_case("inductor", asym=False)
