import torch

from loopgolf.config import ModelConfig
from loopgolf.model.gpt import GPT
from loopgolf.model.recurrence import parse_plan
from loopgolf.model.stream import CrossRepeatSkip, GatedUNetSkip, LoopEmbedding, ResidualValueEmbeds, UNetSkip
from loopgolf.model.wiring import Context, ModelShape


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, dim=4, n_heads=2, n_kv_heads=1, mlp_hidden=8), **kw})


class _Model(torch.nn.Module):
    """Holds a trick's bare parameters the way the GPT does."""

    def __init__(self, members):
        super().__init__()
        for name, m in members.items():
            (self.register_parameter if isinstance(m, torch.nn.Parameter) else self.register_module)(name, m)


def _trick(cls, plan="4", **kw):
    cfg = _cfg(plan=plan, **kw)
    shape = ModelShape.of(cfg, [parse_plan(plan)])
    trick = cls.build(cfg, shape)
    return trick, _Model(trick.create()), parse_plan(plan).layers()


def test_unet_skip_adds_the_weighted_encoder_output():
    trick, model, layers = _trick(UNetSkip)
    assert model.skip_weights.shape == (2, 4) and bool((model.skip_weights == 1).all())
    with torch.no_grad():
        model.skip_weights[1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ctx = Context(model, None, None)
    enc0, enc1 = torch.ones(1, 1, 4), 2 * torch.ones(1, 1, 4)
    trick.at(layers[0])["post"](enc0, ctx)
    trick.at(layers[1])["post"](enc1, ctx)
    x = torch.zeros(1, 1, 4)
    assert torch.equal(trick.at(layers[2])["pre"](x, ctx), enc1)  # row 0 = ones, latest skip first
    assert torch.equal(trick.at(layers[3])["pre"](x, ctx), torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    assert ctx.skips == []


def test_gated_skip_is_a_lerp_that_starts_half_way():
    trick, model, layers = _trick(GatedUNetSkip, skip_gated=True)
    assert UNetSkip.build(_cfg(skip_gated=True), ModelShape.of(_cfg(), [parse_plan("4")])) is None
    ctx = Context(model, None, None)
    ctx.skips.append(torch.full((1, 1, 4), 4.0))
    x = torch.zeros(1, 1, 4)
    out = trick.at(layers[2])["pre"](x, ctx)
    assert torch.allclose(out, torch.full((1, 1, 4), 2.0))  # lerp(4, 0, sigmoid(0)=0.5)


def test_loop_embedding_adds_the_row_of_the_layer_slot():
    trick, model, layers = _trick(LoopEmbedding, plan="1x3", loop_embed=True)
    assert model.loop_embed.shape == (3, 4) and not model.loop_embed.any()
    with torch.no_grad():
        model.loop_embed.copy_(torch.arange(12.0).view(3, 4))
    deeper = parse_plan("1x3").with_loops(5).layers()
    x = torch.zeros(1, 1, 4)
    assert torch.equal(trick.at(layers[1])["pre"](x, Context(model, None, None)), model.loop_embed[1].view(1, 1, 4))
    assert torch.equal(trick.at(deeper[4])["pre"](x, Context(model, None, None)), model.loop_embed[2].view(1, 1, 4))


def test_residual_value_embeds_sum_scaled_tables():
    trick, model, layers = _trick(ResidualValueEmbeds, plan="2", value_embeds=2)
    assert model.ve_scales.shape == (2, 2, 4) and len(model.value_embeds) == 2
    with torch.no_grad():
        model.ve_scales[1] = torch.tensor([[1.0], [10.0]]).expand(2, 4)
    idx = torch.tensor([[3, 5]])
    ctx = Context(model, idx, None)
    x = torch.zeros(1, 2, 4)
    want = model.value_embeds[0](idx) + 10 * model.value_embeds[1](idx)
    assert torch.allclose(trick.at(layers[1])["pre"](x, ctx), want)
    assert torch.equal(trick.at(layers[0])["pre"](x, ctx), x)  # zero scales: transparent


def test_cross_repeat_adds_the_previous_visit_of_the_same_block():
    trick, model, layers = _trick(CrossRepeatSkip, plan="2x3", cross_repeat=True)
    assert model.cross_repeat_scales.shape == (2, 2, 4)
    with torch.no_grad():
        model.cross_repeat_scales[1, 1] = 3.0
    assert "pre" not in trick.at(layers[1])  # first visit: nothing to add
    ctx = Context(model, None, None)
    out_b1 = torch.ones(1, 1, 4)
    trick.at(layers[3])["post"](out_b1, ctx)  # block 1's second visit output
    x = torch.zeros(1, 1, 4)
    assert torch.equal(trick.at(layers[5])["pre"](x, ctx), 3 * out_b1)  # third visit: scales[1, 1]
    assert CrossRepeatSkip.build(_cfg(cross_repeat=True), ModelShape.of(_cfg(), [parse_plan("3")])) is None


def test_stream_tricks_in_a_model_start_transparent():
    idx = torch.randint(0, 64, (2, 6))
    plain = GPT(_cfg(plan="2x2"))
    torch.nn.init.normal_(plain.blocks[0].attn.proj.weight, std=0.3)
    fancy = GPT(_cfg(plan="2x2", loop_embed=True, value_embeds=2, cross_repeat=True))
    fancy.load_state_dict(plain.state_dict(), strict=False)
    assert torch.allclose(plain(idx, idx), fancy(idx, idx), atol=1e-6)


def test_recurrence_scales_multiply_before_the_unet_skip():
    """PR #21 L758-772: x *= s[v], then the decoder's skip is added, then the block runs."""
    model = GPT(_cfg(plan="1x2", recurrence_scales=True))
    assert model.recurrence_scales.shape == (2, 4) and torch.equal(model.recurrence_scales, torch.ones(2, 4))
    torch.manual_seed(0)
    for p in model.blocks.parameters():
        torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        model.recurrence_scales[1] = torch.tensor([0.0, 2.0, -1.0, 0.5])
        model.skip_weights.copy_(torch.tensor([[0.5, 1.0, 1.5, 2.0]]))
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    outs = []
    model.blocks[0].register_forward_hook(lambda m, args, out: outs.append(out.detach()))
    idx = torch.randint(0, 64, (1, 5))
    model(idx, idx)
    x0 = torch.nn.functional.rms_norm(model.tok_emb(idx), (4,))
    torch.testing.assert_close(seen[0], x0)  # s[0] = 1
    want = outs[0] * model.recurrence_scales[1] + model.skip_weights[0] * outs[0]
    torch.testing.assert_close(seen[1], want.detach())


def test_value_embeds_std_sets_the_table_init():
    """PR #1453 keeps nn.Embedding's N(0, 1) (L913): value_embeds_std=1; 0 follows embed_init_std."""
    wide = dict(vocab_size=512, dim=64, n_heads=2, n_kv_heads=1, mlp_hidden=8, plan="2", value_embeds=2)
    torch.manual_seed(0)
    published = GPT(ModelConfig(**wide, value_embeds_std=1.0))
    stds = [emb.weight.std().item() for emb in published.value_embeds]
    assert all(abs(s - 1.0) < 0.02 for s in stds), stds  # 32,768 draws: std error ~0.004
    default = GPT(ModelConfig(**wide))
    assert all(abs(emb.weight.std().item() - 0.005) < 1e-4 for emb in default.value_embeds)


def test_unet_max_pairs_keeps_five_plain_skips_when_the_loop_adds_layers():
    """PR #1290 (L964-970): 11 layers, 4-5 looped -> 13 virtual layers, 6 encoder pushes, but only
    its 5 skip weights: the first 5 decoder layers pop (latest first); the first push goes unused."""
    cfg = _cfg(plan="11:4-5x2", plan_stages="11@0.5", unet_max_pairs=5)
    model = GPT(cfg)
    assert model.skip_weights.shape == (5, 4)
    assert GPT(_cfg(plan="11:4-5x2", plan_stages="11@0.5")).skip_weights.shape == (6, 4)
    trick = next(f for f in model._features if isinstance(f, UNetSkip))
    layers = model.plan.layers()
    assert [v for v, s in enumerate(layers) if "pre" in trick.at(s)] == [6, 7, 8, 9, 10]
    assert [v for v, s in enumerate(layers) if "post" in trick.at(s)] == [0, 1, 2, 3, 4, 5]
    with torch.no_grad():
        model.skip_weights.copy_(torch.arange(1.0, 6.0).view(5, 1).expand(5, 4))
    ctx = Context(model, None, None)
    for v in range(6):
        trick.at(layers[v])["post"](torch.full((1, 1, 4), float(10 ** v)), ctx)
    got = [trick.at(layers[v])["pre"](torch.zeros(1, 1, 4), ctx)[0, 0, 0].item() for v in range(6, 11)]
    assert got == [1 * 1e5, 2 * 1e4, 3 * 1e3, 4 * 1e2, 5 * 1e1]  # row j weighs encoder 5 - j
    assert [t[0, 0, 0].item() for t in ctx.skips] == [1.0]  # encoder 0's output is never added
    flat = GPT(cfg).at(model.stages[0].plan)  # the 11-layer stage: 5 pairs, all used
    assert flat.model.shape.n_skip_rows == 5
    x = torch.randint(0, 64, (1, 8))
    assert model(x, x, stage=0).shape == (1, 8) and model(x, x).shape == (1, 8)
