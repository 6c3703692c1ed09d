"""Fp8Linear: training products within e4m3's rounding of the exact ones, eval mode exact, and a
model with model.fp8 trains and ships the same tensors as without."""
import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.fp8 import Fp8Linear, convert_linears, fp8_linear
from loopgolf.model.gpt import GPT


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_forward_and_input_gradient_match_the_exact_product_to_e4m3_rounding():
    torch.manual_seed(0)
    x = torch.randn(64, 48, requires_grad=True)
    w = torch.randn(32, 48, requires_grad=True)
    g = torch.randn(64, 32)
    y = fp8_linear(x, w)
    y.backward(g)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y_ref = F.linear(x_ref, w_ref)
    y_ref.backward(g)
    # e4m3 keeps 3 mantissa bits: each operand is off by <= 2^-4 relative, a K=48 dot product ~2-4 %
    assert 0 < _rel(y, y_ref) < 0.06
    assert 0 < _rel(x.grad, x_ref.grad) < 0.06
    assert torch.allclose(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)  # weight gradient is not in fp8


def test_outliers_never_overflow_to_nan():
    x = torch.randn(16, 32)
    x[3, 5] = 1e6  # one huge value: its row's scale follows it, other rows keep their precision
    w = torch.randn(16, 32)
    y = fp8_linear(x, w)
    assert torch.isfinite(y).all()
    ok = [r for r in range(16) if r != 3]
    assert _rel(y[ok], F.linear(x, w)[ok]) < 0.06


def test_eval_mode_is_the_plain_linear_and_conversion_keeps_parameters():
    lin = nn.Linear(32, 16, bias=False)
    p = lin.weight
    assert convert_linears(nn.Sequential(lin)) == ["0"]
    assert isinstance(lin, Fp8Linear) and lin.weight is p
    x = torch.randn(4, 8, 32)
    lin.eval()
    assert torch.equal(lin(x), F.linear(x, p))
    lin.train()
    assert not torch.equal(lin(x), F.linear(x, p))  # the fp8 path rounds
    odd = nn.Linear(30, 16, bias=False)  # widths not divisible by 16 stay bf16
    assert convert_linears(nn.Sequential(odd)) == [] and type(odd) is nn.Linear


def test_fp8_model_trains_and_has_the_same_state_dict_names():
    cfg = ModelConfig(dim=64, n_heads=4, n_kv_heads=2, mlp_hidden=128, vocab_size=64, plan="2")
    torch.manual_seed(0)
    plain = GPT(cfg)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**cfg.__dict__, "fp8": True}))
    assert list(model.state_dict()) == list(plain.state_dict())
    assert sum(isinstance(m, Fp8Linear) for m in model.modules()) == 2 * 6  # q, k, v, out, fc, proj
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randint(0, 64, (4, 32))
    losses = []
    for _ in range(6):
        loss = model(x, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses)) and losses[-1] < losses[0]
    model.eval()
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x, x), plain(x, x))  # eval = the artifact's model


def test_compiled_fp8_model_matches_eager():
    """Inductor chooses its own layouts: _scaled_mm's column-major operand must survive it."""
    cfg = ModelConfig(dim=64, n_heads=4, n_kv_heads=2, mlp_hidden=128, vocab_size=64, plan="2", fp8=True)
    torch.manual_seed(0)
    model = GPT(cfg)
    for b in model.blocks:  # non-zero output projections, so every weight gets a gradient
        nn.init.normal_(b.attn.proj.weight, std=0.05)
        nn.init.normal_(b.mlp.proj.weight, std=0.05)
    x = torch.randint(0, 64, (4, 32))
    loss = torch.compile(model)(x, x).mean()
    loss.backward()
    compiled = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager = model(x, x).mean()
    eager.backward()
    assert torch.allclose(loss, eager, rtol=1e-5)
    for p, g in zip(model.parameters(), compiled):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)
