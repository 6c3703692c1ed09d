import torch

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import rms_norm, sequential_residual
from loopgolf.model.gpt import GPT
from loopgolf.model.layer_tricks import parallel_residual


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


def test_parallel_residual_feeds_one_normalized_input_to_both_branches():
    x = torch.randn(1, 2, 4)
    seen = []
    attn = lambda h: seen.append(h) or 2 * h  # noqa: E731
    mlp = lambda h: seen.append(h) or 3 * h  # noqa: E731
    assert torch.allclose(parallel_residual(x, attn, mlp, rms_norm), x + 5 * rms_norm(x))
    assert torch.equal(seen[0], seen[1])
    seq = sequential_residual(x, lambda h: 2 * h, lambda h: 3 * h, rms_norm)
    y = x + 2 * rms_norm(x)
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
