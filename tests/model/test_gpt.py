import torch

from loopgolf.config import ModelConfig
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset


def test_baseline_preset_has_exact_challenge_parameter_count():
    model = GPT(get_preset("baseline").model)
    assert model.num_params() == 17_059_912  # NaiveBaseline train.log


def test_universal_preset_parameter_count():
    model = GPT(get_preset("universal").model)
    assert model.plan.n_blocks == 1 and model.plan.n_virtual == 12
    assert model.num_params() == 3_478_536


def test_shared_block_is_one_module_and_gets_gradient_from_every_loop():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="1x3")
    model = GPT(cfg)
    assert len(model.blocks) == 1
    torch.nn.init.normal_(model.blocks[0].attn.proj.weight, std=0.02)
    torch.nn.init.normal_(model.blocks[0].mlp.proj.weight, std=0.02)
    idx = torch.randint(0, 64, (2, 8))
    model(idx, idx).mean().backward()
    assert model.blocks[0].attn.c_q.weight.grad.abs().sum() > 0


def test_blocks_start_as_identity_so_loss_is_independent_of_depth():
    torch.manual_seed(0)
    idx = torch.randint(0, 64, (2, 8))
    losses, emb = [], None
    for plan in ("1", "2x3"):
        cfg = ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan=plan,
                          unet_skips=False)
        model = GPT(cfg)
        if emb is None:
            emb = model.tok_emb.weight.detach().clone()
        model.tok_emb.weight.data.copy_(emb)
        losses.append(model(idx, idx).mean().item())
    assert abs(losses[0] - losses[1]) < 1e-5


def test_forward_returns_per_token_nats_and_causality():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=2, mlp_hidden=64, plan="3")
    torch.manual_seed(0)
    model = GPT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    idx = torch.randint(0, 64, (1, 10))
    out = model.logits(idx)
    idx2 = idx.clone()
    idx2[0, 7] = (idx2[0, 7] + 1) % 64
    out2 = model.logits(idx2)
    assert torch.allclose(out[0, :7], out2[0, :7], atol=1e-6)  # future tokens do not leak
    assert not torch.allclose(out[0, 7:], out2[0, 7:])
    nll = model(idx, idx)
    assert nll.shape == (1, 10) and nll.dtype == torch.float32
    ref = torch.nn.functional.cross_entropy(out.view(-1, 64), idx.view(-1), reduction="none")
    assert torch.allclose(nll.view(-1), ref, atol=1e-6)
    assert out.abs().max() <= cfg.logit_softcap


def test_mlp_variants_build_and_run():
    for mlp in ("relu2", "leaky_relu2", "swiglu"):
        cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=1, mlp=mlp, mlp_hidden=48, plan="2")
        model = GPT(cfg)
        idx = torch.randint(0, 64, (2, 5))
        assert torch.isfinite(model(idx, idx)).all()


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
