import pytest
import torch

from loopgolf.config import ConfigError, ModelConfig
from loopgolf.model.blocks import rms_norm, sequential_residual
from loopgolf.model.gpt import GPT
from loopgolf.model.layer_tricks import TwoLaneResidual, parallel_residual


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48), **kw})


def test_per_layer_scales_replace_the_block_controls():
    model = GPT(_cfg(plan="1x3", per_layer_scales=True))
    names = {n for n, _ in model.named_parameters()}
    assert {"layer_attn_scale", "layer_mlp_scale", "layer_resid_mix"} <= names
    assert not any(n.startswith("blocks.0.") and n.endswith(("attn_scale", "mlp_scale", "resid_mix")) for n in names)
    assert model.layer_resid_mix.shape == (3, 2, 32)
    assert torch.equal(model.layer_resid_mix[:, 0], torch.ones(3, 32)) and not model.layer_resid_mix[:, 1].any()
    idx = torch.randint(0, 64, (2, 6))
    torch.nn.init.normal_(model.blocks[0].mlp.proj.weight, std=0.1)
    model(idx, idx).mean().backward()
    assert all(model.layer_mlp_scale.grad[v].abs().sum() > 0 for v in range(3))  # one set per visit


def test_ln_scale_divides_the_normalized_input_by_sqrt_block():
    model = GPT(_cfg(plan="3", ln_scale=True))
    x = torch.randn(1, 2, 32)
    for layer, b in zip(model._stage_layers[-1], range(3)):
        assert torch.allclose(layer.norm(x), rms_norm(x) / (b + 1) ** 0.5)


class _Ctx:
    def __init__(self, x0):
        self.x0, self.lanes = x0, {}


def test_parallel_residual_feeds_one_normalized_input_to_both_branches():
    x, x0 = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    mix = torch.stack([torch.full((4,), 0.7), torch.full((4,), 0.2)])
    xm = 0.7 * x + 0.2 * x0  # resid_mix first
    seen = []
    attn = lambda h: seen.append(h) or 2 * h  # noqa: E731
    mlp = lambda h: seen.append(h) or 3 * h  # noqa: E731
    assert torch.allclose(parallel_residual(x, mix, _Ctx(x0), attn, mlp, rms_norm), xm + 5 * rms_norm(xm))
    assert torch.equal(seen[0], seen[1])
    seq = sequential_residual(x, mix, _Ctx(x0), lambda h: 2 * h, lambda h: 3 * h, rms_norm)
    y = xm + 2 * rms_norm(xm)
    assert torch.allclose(seq, y + 3 * rms_norm(y))
    model = GPT(_cfg(plan="3", parallel_from=1))
    assert [layer.residual for layer in model._stage_layers[-1]] == [sequential_residual, parallel_residual,
                                                                     parallel_residual]


def test_untied_repeat_mlps_serve_repeated_visits_and_deeper_plans():
    model = GPT(_cfg(plan="2x3", untie_repeat_mlp=True))
    layers = model._stage_layers[-1]
    assert len(model.repeat_mlps) == 4 and not model.repeat_mlps[0].proj.weight.any()
    assert layers[0].mlp is model.blocks[0].mlp and layers[1].mlp is model.blocks[1].mlp
    assert [layer.mlp for layer in layers[2:]] == list(model.repeat_mlps[i] for i in (0, 2, 1, 3))
    deeper = model.at(model.plan.with_loops(5))._layers
    assert deeper[-2].mlp is model.repeat_mlps[1]  # block 0 beyond its trained visits: its deepest MLP


def _randomize(model, std=0.2):
    torch.manual_seed(3)
    for p in model.parameters():
        torch.nn.init.normal_(p, mean=0.5 if p.ndim == 1 else 0.0, std=std)
    return model


def test_two_lane_layer_math_has_the_published_form():
    """One two-lane layer against PR #1855's _parallel_block written out (known lane updates)."""
    model = GPT(_cfg(plan="3", lanes_from=1))
    with torch.no_grad():
        model.lane_post.copy_(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]))
        model.lane_resid.copy_(torch.tensor([[0.5, 0.25], [1.5, 2.0]]))
    layers = model._stage_layers[-1]
    x, x0, l1 = torch.randn(1, 3, 32), torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    mix = torch.stack([torch.full((32,), 0.6), torch.full((32,), 0.3)])
    ctx = _Ctx(x0)
    ctx.model, ctx.lanes["lane1"] = model, l1
    attn, mlp = (lambda h: 2 * h + 1), (lambda h: -h)  # noqa: E731
    a, f = 2 * rms_norm(0.6 * x + 0.3 * x0) + 1, -rms_norm(l1)  # attention reads lane 0 + x0; MLP lane 1
    out = layers[1].residual(x, mix, ctx, attn, mlp, rms_norm)  # block 1 -> row 0, not the last layer
    assert torch.allclose(out, 0.5 * x + 1 * a + 3 * f, atol=1e-6)
    assert torch.allclose(ctx.lanes["lane1"], 0.25 * l1 + 2 * a + 4 * f, atol=1e-6)
    ctx.lanes["lane1"] = l1
    last = layers[2].residual(x, mix, ctx, attn, mlp, rms_norm)  # block 2 -> row 1, merges the lanes
    lane0, lane1 = 1.5 * x + 5 * a + 7 * f, 2.0 * l1 + 6 * a + 8 * f
    assert torch.allclose(last, 0.5 * (lane0 + lane1), atol=1e-5)


def test_two_lane_model_equals_a_hand_written_forward():
    """plan 4, lanes from block 2: layers 0-1 sequential (U-Net push), 2-3 two-lane; lane 1 starts at
    the stream before layer 2's skip, which goes to lane 0 only (#1855 L1371-1385)."""
    model = _randomize(GPT(_cfg(plan="4", lanes_from=2)))
    assert model.lane_post.shape == (2, 2, 2) and model.lane_resid.shape == (2, 2)
    assert torch.equal(GPT(_cfg(plan="4", lanes_from=2)).lane_resid, torch.full((2, 2), 1.1))
    layers = model._stage_layers[-1]
    assert [layer.residual for layer in layers[:2]] == [sequential_residual] * 2
    idx = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        x = rms_norm(model.tok_emb(idx))
        ctx = _Ctx(x)
        ctx.model = model
        skips = []
        for b in (0, 1):
            x = model.blocks[b](x, ctx, layers[b])
            skips.append(x)
        lane0, lane1 = x, x
        for j, b in enumerate((2, 3)):
            blk, r = model.blocks[b], b - 2
            lane0 = lane0 + model.skip_weights[j] * skips.pop()
            m = blk.resid_mix
            a = blk.attn_scale * blk.attn(rms_norm(m[0] * lane0 + m[1] * ctx.x0), ctx, layers[b])
            f = blk.mlp_scale * blk.mlp(rms_norm(lane1))
            p, q = model.lane_post[r], model.lane_resid[r]
            lane0, lane1 = (q[0] * lane0 + p[0, 0] * a + p[1, 0] * f, q[1] * lane1 + p[0, 1] * a + p[1, 1] * f)
        want = model.unembed(rms_norm(0.5 * (lane0 + lane1)))
        assert torch.allclose(model.logits(idx), want, atol=1e-5)
        assert not torch.allclose(lane0, lane1, atol=1e-3)  # the lanes really differ


def test_two_lane_layers_must_end_the_plan():
    with pytest.raises(ValueError, match="must be its last layers"):
        GPT(_cfg(plan="3x2", lanes_from=2))  # blocks 0,1,2,0,1,2: block 2 is not only at the end
    with pytest.raises(ValueError, match="4 blocks"):
        GPT(_cfg(plan="4", lanes_from=4))
    model = GPT(_cfg(plan="6:2-3x2", lanes_from=4))  # blocks 0,1,2,3,2,3,4,5: lanes on the last two
    assert [layer.post for layer in model._stage_layers[-1]][5][-1] == TwoLaneResidual.start_lanes
    deeper = model.at(model.plan.with_loops(3))  # eval-time depth keeps the lanes on the final layers
    assert deeper(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4)
    with pytest.raises(ConfigError, match="lanes_from"):
        _cfg(plan="4", lanes_from=2, parallel_from=1).validate()


def test_orthogonal_init_gives_orthonormal_input_matrices():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=96, plan="2", ortho_init=True)
    torch.manual_seed(0)
    model = GPT(cfg)
    for block in model.blocks:
        for w in (block.attn.c_q.weight, block.attn.c_k.weight, block.attn.c_v.weight):  # rows <= cols
            assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-5)
        fc = block.mlp.fc.weight  # 96 x 32: tall, orthonormal columns
        assert torch.allclose(fc.T @ fc, torch.eye(fc.shape[1]), atol=1e-5)
        assert not block.attn.proj.weight.any() and not block.mlp.proj.weight.any()  # still zero
    torch.manual_seed(0)
    plain = GPT(ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=96, plan="2"))
    w = plain.blocks[0].attn.c_k.weight  # kaiming-uniform default: not orthonormal
    assert not torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-2)
    assert torch.equal(plain.tok_emb.weight, model.tok_emb.weight)  # the core's draws come first


def test_normal_init_is_pr29s():
    """model.init_std = 0.02 (PR #29 L233-240): block matrices and the block's norm weights N(0, 0.02),
    output projections N(0, 0.02 / sqrt(2 x 12)); the final norm keeps 1."""
    cfg = ModelConfig(vocab_size=64, dim=256, n_heads=4, n_kv_heads=1, mlp="swiglu", mlp_hidden=512, plan="1x12",
                      block="plain_prenorm", unet_skips=False, init_std=0.02)
    torch.manual_seed(0)
    model = GPT(cfg)
    b = model.blocks[0]
    for w in (b.attn.c_q.weight, b.attn.c_k.weight, b.mlp.fc.weight):
        assert abs(w.std().item() / 0.02 - 1) < 0.03 and abs(w.mean().item()) < 1e-3
    for w in (b.attn.proj.weight, b.mlp.proj.weight):
        assert abs(w.std().item() / (0.02 / 24 ** 0.5) - 1) < 0.03
    for w in (b.attn_norm.weight, b.mlp_norm.weight):  # redrawn as every shared_block tensor in the PR
        assert w.abs().max() < 0.1 and abs(w.std().item() / 0.02 - 1) < 0.2
    assert torch.equal(model.final_norm.weight, torch.ones(256))
    baseline = GPT(_cfg(plan="1x2", init_std=0.02))  # the baseline block's 1-D controls keep their init
    assert torch.equal(baseline.blocks[0].attn.q_gain, torch.full((4,), 1.5))
    assert baseline.blocks[0].attn.proj.weight.std() > 0  # no longer zero-initialized
    with pytest.raises(ValueError, match="model.ortho_init"):
        GPT(_cfg(plan="2", init_std=0.02, ortho_init=True))


def test_plain_prenorm_refuses_the_tricks_it_cannot_run():
    for kw in (dict(per_layer_scales=True), dict(ln_scale=True), dict(parallel_from=1)):
        with pytest.raises(ConfigError, match="plain_prenorm"):
            GPT(_cfg(plan="2", block="plain_prenorm", **kw))
