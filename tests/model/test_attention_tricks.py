import pytest
import torch

from loopgolf.config import ModelConfig
from loopgolf.model.attention_tricks import XSA
from loopgolf.model.gpt import GPT
from loopgolf.model.recurrence import parse_plan
from loopgolf.model.wiring import ModelShape


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48), **kw})


def _randomize(model):
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_xsa_removes_the_component_along_the_own_value():
    cfg = _cfg(xsa_last=-1)
    xsa = XSA.build(cfg, ModelShape.of(cfg, [parse_plan("1")]))
    y, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)  # (B, H, T, D), (B, KV, T, D)
    out = xsa(y, v)
    vh = torch.nn.functional.normalize(v, dim=-1).repeat_interleave(2, dim=1)
    assert torch.allclose((out * vh).sum(-1), torch.zeros(2, 4, 5), atol=1e-5)  # orthogonal to v_hat
    assert torch.allclose(out + (y * vh).sum(-1, keepdim=True) * vh, y, atol=1e-6)  # only that part left


def test_xsa_pads_an_odd_head_dim_and_gives_the_same_projection():
    """Head dim 11 (like seed-shared-3x4's 110) is padded to 16 around XSA; the result is exact."""
    cfg = _cfg(dim=44, xsa_last=-1)
    xsa = XSA.build(cfg, ModelShape.of(cfg, [parse_plan("1")]))
    assert xsa.pad == 5 and XSA.build(_cfg(xsa_last=-1), ModelShape.of(_cfg(), [parse_plan("1")])).pad == 0
    y = torch.randn(2, 4, 5, 11, requires_grad=True)
    v = torch.randn(2, 2, 5, 11, requires_grad=True)
    out = xsa(y, v)
    vh = torch.nn.functional.normalize(v, dim=-1).repeat_interleave(2, dim=1)
    ref = y - (y * vh).sum(-1, keepdim=True) * vh
    assert out.shape == y.shape and torch.allclose(out, ref, atol=1e-6)
    g = torch.randn_like(out)
    dy, dv = torch.autograd.grad(out, (y, v), g)
    ry, rv = torch.autograd.grad(ref, (y, v), g)
    assert torch.allclose(dy, ry, atol=1e-5) and torch.allclose(dv, rv, atol=1e-5)


def test_xsa_applies_per_virtual_layer_even_for_shared_blocks():
    model = GPT(_cfg(plan="2x3", xsa_last=2))
    assert [len(layer.attn_y) for layer in model._stage_layers[-1]] == [0, 0, 0, 0, 1, 1]
    assert [(s.block, s.visit) for s in model.plan.layers()] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    everywhere = GPT(_cfg(plan="2x3", xsa_last=-1))
    assert all(len(layer.attn_y) == 1 for layer in everywhere._stage_layers[-1])


def test_lora_starts_as_a_no_op_with_one_set_per_extra_loop():
    idx = torch.randint(0, 64, (2, 8))
    plain = _randomize(GPT(_cfg(plan="2x3")))
    lora = GPT(_cfg(plan="2x3", lora_rank=4))
    lora.load_state_dict(plain.state_dict(), strict=False)
    assert torch.allclose(plain(idx, idx), lora(idx, idx), atol=1e-6)  # B = 0
    names = {n for n, _ in lora.named_parameters() if n.startswith("lora.")}
    assert names == {f"lora.{t}_{ab}" for t in "qkvo" for ab in "ab"}
    # PR #21 L716-724: num_recurrence - 1 = 2 sets, shared by both blocks; (sets, r, d_in) / (sets, d_out, r)
    assert lora.lora.q_a.shape == (2, 4, 32) and lora.lora.k_b.shape == (2, 16, 4) and lora.lora.o_a.shape == (2, 4, 32)
    a = lora.lora.q_a
    assert a.abs().max() <= 32 ** -0.5 and abs(a.std().item() - (3 * 32) ** -0.5) < 0.02  # nn.Linear's U(+-1/sqrt(in))
    # loop 0 (virtual layers 0, 1) has no ops; loop k uses set k - 1 for both blocks (L761)
    layers = lora._stage_layers[-1]
    assert [len(layer.qkv) + len(layer.out) for layer in layers] == [0, 0, 2, 2, 2, 2]
    assert [layer.qkv[0].keywords["i"] for layer in layers[2:]] == [0, 0, 1, 1]
    torch.nn.init.normal_(lora.lora.v_b, std=0.1)
    lora(idx, idx).mean().backward()
    assert all(lora.lora.v_a.grad[s].abs().sum() > 0 for s in range(2))  # each extra loop trains its own


def test_lora_leaves_loop_0_as_the_unadapted_model():
    """With non-zero adapters, the first loop's block outputs equal the plain model's; later ones differ."""
    idx = torch.randint(0, 64, (2, 8))
    plain = _randomize(GPT(_cfg(plan="2x2")))
    lora = GPT(_cfg(plan="2x2", lora_rank=4))
    lora.load_state_dict(plain.state_dict(), strict=False)
    for n in ("q_b", "k_b", "v_b", "o_b"):
        torch.nn.init.normal_(getattr(lora.lora, n), std=0.5)

    def block_outputs(model):
        seen = []
        hooks = [b.register_forward_hook(lambda m, args, out: seen.append(out.detach())) for b in model.blocks]
        model(idx, idx)
        for h in hooks:
            h.remove()
        return seen  # in virtual-layer order: block 0, 1 (loop 0), 0, 1 (loop 1)

    ref, got = block_outputs(plain), block_outputs(lora)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    assert not torch.allclose(ref[2], got[2]) and not torch.allclose(ref[3], got[3])


def test_lora_delta_is_b_times_a_x():
    model = _randomize(GPT(_cfg(plan="1x2", lora_rank=2)))
    layer = model._stage_layers[-1][1]  # the second loop: set 0
    x, q, k, v = torch.randn(1, 3, 32), torch.randn(1, 3, 32), torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    (op,) = layer.qkv
    q2, k2, v2 = op(x, q, k, v)
    a, b = model.lora.k_a[0], model.lora.k_b[0]
    assert torch.allclose(k2, k + x @ a.T @ b.T, atol=1e-6)
    y, out = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    (op,) = layer.out
    assert torch.allclose(op(y, out), out + y @ model.lora.o_a[0].T @ model.lora.o_b[0].T, atol=1e-6)


def test_lora_needs_a_plan_that_repeats_a_block():
    with pytest.raises(ValueError, match="model.lora_rank"):
        GPT(_cfg(plan="2", lora_rank=2))


def test_value_injection_only_on_chosen_layers_and_transparent_at_init():
    model = GPT(_cfg(plan="4", ve_dim=8, ve_layers="1,-1"))
    assert [len(layer.v) for layer in model._stage_layers[-1]] == [0, 1, 0, 1]
    assert model.ve_inject.scales.shape == (2,) and not model.ve_inject.scales.any()
    idx = torch.randint(0, 64, (2, 6))
    torch.nn.init.normal_(model.blocks[1].attn.proj.weight, std=0.1)
    before = model(idx, idx)
    with torch.no_grad():
        model.ve_inject.scales.fill_(1.0)
    assert not torch.allclose(model(idx, idx), before)
    deeper = model.at(parse_plan("4"))  # ve_layers count from the end of the running plan
    assert [len(layer.v) for layer in deeper._layers] == [0, 1, 0, 1]


def test_sparse_attn_gate_scales_each_head_by_the_published_sigmoid():
    cfg = _cfg(plan="2", attn_gate_window=3, attn_gate_scale=0.5)
    model = GPT(cfg)
    assert model.attn_gate.weight.shape == (2, 4, 3) and not model.attn_gate.weight.any()
    with torch.no_grad():
        model.attn_gate.weight[1] = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, -4], [1, 1, 1]])
    (op,) = model._stage_layers[-1][1].attn_y  # block 1's row
    y, x = torch.randn(2, 4, 5, 8), torch.zeros(2, 5, 32)
    x[..., :3] = torch.tensor([1.0, 1.0, 1.0])
    x[..., 3:] = 7.0  # dims past the window are not read
    logit = 0.5 * torch.tensor([1.0, 2.0, -4.0, 3.0])  # scale * W[1, h] . x[:3]
    want = y * torch.sigmoid(logit)[None, :, None, None]
    assert torch.allclose(op(y, None, x), want, atol=1e-6)


def test_sparse_attn_gate_at_init_halves_attention_and_follows_xsa():
    """W = 0: every head is scaled by sigmoid(0) = 1/2, the same model as halving attn.proj."""
    idx = torch.randint(0, 64, (2, 6))
    gated = _randomize(GPT(_cfg(plan="1x3", attn_gate_window=12, xsa_last=-1)))
    with torch.no_grad():
        gated.attn_gate.weight.zero_()
    plain = GPT(_cfg(plan="1x3", xsa_last=-1))
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "attn_gate.weight"})
    with torch.no_grad():
        plain.blocks[0].attn.proj.weight.mul_(0.5)
    assert torch.allclose(gated(idx, idx), plain(idx, idx), atol=1e-5)
    layers = gated._stage_layers[-1]
    assert all(isinstance(layer.attn_y[0], XSA) and len(layer.attn_y) == 2 for layer in layers)  # XSA first
    gated(idx, idx).mean().backward()
    assert gated.attn_gate.weight.grad.abs().sum() > 0  # one row per physical block, shared by loops


def test_value_injection_published_inits_and_global_scale():
    """PR #1290: table std 0.01, per-layer scales 1, a global scale 0.1, orthogonal projection;
    PR #927: the projection orthogonal x 1/sqrt(14)."""
    from loopgolf.model.attention_tricks import ValueInjection
    torch.manual_seed(0)
    ve = ValueInjection(4096, 32, 64, (-2, -1), table_std=0.01, scale_init=1.0, global_scale=0.1, proj_gain=1.0)
    assert abs(ve.table.weight.std().item() - 0.01) < 3e-4
    assert ve.scales.tolist() == [1.0, 1.0] and ve.scale.item() == pytest.approx(0.1)
    w = ve.proj.weight  # (64, 32)
    assert torch.allclose(w.T @ w, torch.eye(32), atol=1e-5)
    idx = torch.tensor([[1, 2, 3]])
    assert torch.allclose(ve(idx), 0.1 * ve.proj(ve.table(idx)))
    g = 14 ** -0.5
    w927 = ValueInjection(64, 32, 64, (5, 6), proj_gain=g).proj.weight
    assert torch.allclose(w927.T @ w927, g * g * torch.eye(32), atol=1e-5)
    default = ValueInjection(64, 32, 64, (5, 6))
    assert not hasattr(default, "scale") and not default.scales.any()
    assert {n for n, _ in default.named_parameters()} == {"table.weight", "proj.weight", "scales"}
