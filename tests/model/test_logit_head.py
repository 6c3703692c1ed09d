"""The logit head: AsymLogit's known values and its start as the symmetric softcap; the fused head
gives the plain head's losses and gradients inside a whole GPT (tied, untied, AsymLogit, MTP heads;
fp32 tight, bf16 autocast loose) and logits consistent with its nats; AsymLogit's caps have their
own parameter row, whose default learning rate 0 keeps them at their init (PR #1923)."""
from __future__ import annotations

import math

import pytest
import torch

from loopgolf.config import ConfigError, ModelConfig, OptimConfig
from loopgolf.model.gpt import GPT
from loopgolf.model.logit_head import AsymLogit, FusedHead, PlainHead, SoftCap
from loopgolf.train.optim import build_optimizers

V = 97


def _model(**kw) -> GPT:
    cfg = ModelConfig(vocab_size=V, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="2", **kw)
    torch.manual_seed(1)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.3)  # zero-init projections would hide most of the path
        for p in model.logit_cap.parameters():
            p.copy_(torch.tensor(5.0 if p is model.logit_cap.softcap_pos else 3.0))
    return model


def _pair(rows: int = 7, **kw) -> tuple[GPT, GPT]:
    """A plain-head GPT and a fused-head twin with the same weights, chunks of `rows` rows."""
    plain, fused = _model(**kw), _model(fused_ce=True, **kw)
    fused.load_state_dict(plain.state_dict())
    fused._head.rows = rows
    return plain, fused


def test_asym_logit_known_values():
    cap = AsymLogit(30.0)
    with torch.no_grad():
        cap.softcap_pos.fill_(2.0)
        cap.softcap_neg.fill_(1.0)
    z = torch.tensor([3.0, -3.0, 0.0, 0.5, -0.5])
    want = torch.tensor([2 * math.tanh(1.5), -math.tanh(3.0), 0.0, 2 * math.tanh(0.25), -math.tanh(0.5)])
    assert torch.allclose(cap(z), want)


def test_asym_logit_starts_as_the_symmetric_softcap():
    z = torch.randn(64, V) * 40
    assert torch.equal(AsymLogit(30.0)(z), SoftCap(30.0)(z))
    plain = GPT(ModelConfig(vocab_size=V, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="2"))
    asym = GPT(ModelConfig(vocab_size=V, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="2",
                           asym_logit=True))
    asym.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(set(asym.state_dict()) - set(plain.state_dict())) == [
        "logit_cap.softcap_neg", "logit_cap.softcap_pos"]
    idx = torch.randint(0, V, (2, 9))
    assert torch.equal(asym(idx, idx), plain(idx, idx))


def test_heads_are_chosen_at_construction():
    assert isinstance(GPT(ModelConfig(plan="1", dim=32, n_heads=4, n_kv_heads=2))._head, PlainHead)
    model = GPT(ModelConfig(plan="1", dim=32, n_heads=4, n_kv_heads=2, fused_ce=True, asym_logit=True))
    assert isinstance(model._head, FusedHead) and model._head.cap is model.logit_cap
    assert model._head.rows == 8192  # fused_ce.chunk_rows(1024)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}, {"asym_logit": True}, {"mtp_heads": 2}],
                         ids=["tied", "untied", "asym", "mtp"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_fused_head_gives_the_plain_losses_and_gradients(kw, amp):
    plain, fused = _pair(**kw)
    idx, tgt = torch.randint(0, V, (3, 11)), torch.randint(0, V, (3, 11))  # 33 rows, chunks of 7
    losses, grads = [], []
    for model in (plain, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            nll = model(idx, tgt)
        losses.append(nll)
        grads.append(dict(zip([n for n, _ in model.named_parameters()],
                              torch.autograd.grad(nll.sum(), list(model.parameters())))))
    assert losses[1].dtype == torch.float32 and losses[1].shape == (3, 11)
    assert torch.allclose(losses[1], losses[0], rtol=1e-6, atol=2e-6)  # same logits matmul per row
    tol = 1e-2 if amp else 1e-5  # bf16: the fused dW sums fp32 chunks, the plain one rounds once
    for name, g in grads[0].items():
        err = ((grads[1][name] - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert err < tol, (name, err)
    if kw.get("asym_logit"):
        assert grads[1]["logit_cap.softcap_pos"].abs() > 1e-3  # the caps learn through the fused path


def test_fused_logits_score_the_same_nats_as_forward():
    """What the legality check compares: nats of forward = -log softmax(logits)[target]."""
    _, fused = _pair(asym_logit=True)
    fused.eval()
    idx, tgt = torch.randint(0, V, (2, 13)), torch.randint(0, V, (2, 13))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        nats = fused(idx, tgt)
        logits = fused.logits(idx)
    assert logits.shape == (2, 13, V) and logits.dtype == torch.float32
    logp = torch.log_softmax(logits.double(), -1).gather(-1, tgt[..., None]).squeeze(-1)
    assert torch.allclose(nats.double(), -logp, rtol=1e-6, atol=1e-6)


def test_asym_logit_needs_a_softcap():
    with pytest.raises(ConfigError, match="model.asym_logit.*model.logit_softcap"):
        GPT(ModelConfig(plan="1", dim=32, n_heads=4, n_kv_heads=2, asym_logit=True, logit_softcap=0.0))


def test_asym_caps_stay_at_init_with_the_default_learning_rate():
    model = _model(asym_logit=True)
    opts = build_optimizers(model, OptimConfig(), model.cfg)
    groups = [g for o in opts for g in o.param_groups if g["name"] == "logit_cap"]
    assert len(groups) == 1 and groups[0]["lr"] == 0.0 and len(groups[0]["params"]) == 2
    before = [p.detach().clone() for p in model.logit_cap.parameters()]
    idx = torch.randint(0, V, (2, 9))
    model(idx, idx).mean().backward()
    assert all(p.grad.abs() > 0 for p in model.logit_cap.parameters())
    for o in opts:
        o.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.logit_cap.parameters()))
    trained = build_optimizers(model, OptimConfig(asym_logit_lr=0.01), model.cfg)
    for o in trained:
        o.step()
    assert not torch.equal(before[0], model.logit_cap.softcap_pos.detach())


@pytest.mark.slow  # ~5 s on 2 cores: dynamo traces a whole GPT
def test_a_fused_gpt_compiles_in_one_graph():
    """The Trainer compiles the whole model: the fused head (AsymLogit and MTP heads included) must
    trace without a graph break and give eager's loss and gradients."""
    torch._dynamo.reset()
    _, model = _pair(asym_logit=True, mtp_heads=1)
    idx = torch.randint(0, V, (2, 9))
    compiled = torch.compile(model, dynamic=False, fullgraph=True, backend="aot_eager_decomp_partition")
    runs = []
    for fn in (model, compiled):
        loss = fn(idx, idx)
        runs.append([loss] + list(torch.autograd.grad(loss.sum(), list(model.parameters()))))
    for a, b in zip(*runs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
