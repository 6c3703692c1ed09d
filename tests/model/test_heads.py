import torch

from loopgolf.config import ModelConfig
from loopgolf.model.gpt import GPT


def _model(**kw):
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="2", mtp_heads=2, **kw)
    torch.manual_seed(1)
    model = GPT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_mtp_heads_change_only_the_training_loss():
    idx = torch.randint(0, 64, (2, 8))
    model = _model()
    model.eval()
    plain = model(idx, idx)
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(
        model.logits(idx).view(-1, 64), idx.view(-1), reduction="none").view(2, 8))
    model.train()
    trained = model(idx, idx)
    assert (trained[:, :-1] > plain[:, :-1]).all()  # auxiliary losses added where a target exists
    assert torch.allclose(trained[:, -1], plain[:, -1])  # the last position has no t+2 target


def test_mtp_loss_is_pr21s_weighted_mean_of_the_head_means():
    """PR #21 L1107-1119: loss = mean CE + w * (sum_k mean over the T - k positions of head k) / n,
    head k = weightless RMSNorm of proj_k(h) into the tied softcapped head. The mean over all
    positions of loopgolf's per-token loss equals it."""
    from loopgolf.model.blocks import rms_norm
    F = torch.nn.functional
    idx = torch.randint(0, 64, (2, 6))
    model = _model(mtp_weight=0.15)
    model.train()
    h = model._hidden(idx, model._stage_layers[-1])
    want = F.cross_entropy(model.unembed(h).reshape(-1, 64), idx.reshape(-1))
    mtp = 0.0
    for k, head in enumerate(model.mtp_heads, start=1):
        z = F.linear(rms_norm(head.proj(h[:, :-k])), model.tok_emb.weight)
        mtp = mtp + F.cross_entropy((30 * torch.tanh(z / 30)).reshape(-1, 64), idx[:, k:].reshape(-1))
    want = want + 0.15 * mtp / 2
    torch.testing.assert_close(model(idx, idx).mean(), want, rtol=1e-5, atol=1e-6)


def test_mtp_heads_never_ship():
    model = _model()
    assert [n for n in model.state_dict() if n.startswith("mtp_heads.")] == ["mtp_heads.0.proj.weight",
                                                                            "mtp_heads.1.proj.weight"]
    assert not any(n.startswith("mtp_heads") for n in model.shipped_state())


def test_mtp_heads_go_through_the_models_fused_head():
    """model.fused_ce covers the auxiliary losses too (model.nll): same training loss and head-weight
    gradient as the plain head."""
    idx = torch.randint(0, 64, (2, 8))
    plain, fused = _model(), _model(fused_ce=True)
    fused.load_state_dict(plain.state_dict())
    fused._head.rows = 5  # 16 rows (and 14, 12 for the two heads) in uneven chunks
    losses = [m(idx, idx) for m in (plain, fused)]
    assert torch.allclose(losses[1], losses[0], atol=1e-5)
    g = [torch.autograd.grad(loss.sum(), (m.tok_emb.weight, m.mtp_heads[1].proj.weight))
         for loss, m in zip(losses, (plain, fused))]
    for a, b in zip(*g):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
