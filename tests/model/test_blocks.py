import torch

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import Block, Rotary, rms_norm, to_stream_dtype
from loopgolf.model.gpt import GPT


def test_padded_causal_attention_equals_sdpa_for_odd_head_dim(monkeypatch):
    """Head dim 110 (seed-shared-3x4) is zero-padded to 112 before SDPA on CUDA; the padding must
    not change the result (same softmax scale, padded outputs sliced off). Forced on CPU here."""
    from loopgolf.model import blocks
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 16, 110), torch.randn(2, 4, 16, 110), torch.randn(2, 4, 16, 110)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(blocks, "SDPA_PAD_MULTIPLE", 8)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(blocks.F, "scaled_dot_product_attention",
                        lambda q, *a, **kw: seen.append(q.size(-1)) or sdpa(q, *a, **kw))
    out = blocks.causal_attention(q, k, v)
    assert seen == [112] and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_partial_rope_rotates_only_the_first_dims_and_keeps_norms():
    rot = Rotary(4, 10000.0)
    x = torch.randn(1, 2, 5, 8)
    y = rot(x)
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert torch.allclose(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1), atol=1e-5)
    assert torch.equal(y[..., 0, :], x[..., 0, :])  # position 0: angle 0


def test_a_fresh_block_is_the_identity():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="1")
    model = GPT(cfg)
    x = torch.randn(2, 5, 32)
    layer = model._stage_layers[-1][0]

    class Ctx:
        x0 = torch.randn(2, 5, 32)

    assert torch.allclose(model.blocks[0](x, Ctx, layer), x)  # zero projections, resid_mix (1, 0)
    assert isinstance(model.blocks[0], Block) and {n for n, _ in model.blocks[0].named_parameters()} >= {
        "attn_scale", "mlp_scale", "resid_mix", "attn.q_gain"}


def test_residual_stream_runs_in_the_autocast_dtype():
    x = torch.randn(2, 3)
    assert to_stream_dtype(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert to_stream_dtype(x).dtype == torch.bfloat16
    assert torch.allclose(rms_norm(x).pow(2).mean(-1), torch.ones(2), atol=1e-5)
