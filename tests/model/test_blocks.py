import torch

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import Block, RMSNorm, Rotary, rms_norm, to_stream_dtype
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


def _pr29_reference_logits(model, idx, n_loops):
    """PR #29's forward (L75-83, L105-201, L242-254), written out by hand on the model's weights:
    raw embedding, x += attn(norm1(x)); x += ffn(norm2(x)) per loop, norm_out, tied logits, no cap.
    Its RoPE is x*cos + rotate_half(x)*sin; loopgolf's turns the other way, so the reference's q/k
    projections are loopgolf's with the second half of each head's rows negated (P R(-t) P = R(t))."""
    F = torch.nn.functional
    blk = model.blocks[0]
    a = blk.attn
    H, hd = a.n_heads, a.head_dim
    sign = torch.cat([torch.ones(hd // 2), -torch.ones(hd // 2)])

    def norm(x, w):
        return (x.float() * x.float().pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()).type_as(x) * w

    def rope(x):
        T = x.size(-2)
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat([f, f], -1)
        x1, x2 = x.chunk(2, -1)
        return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()

    wq = (a.c_q.weight.view(H, hd, -1) * sign[None, :, None]).reshape_as(a.c_q.weight)
    wk = a.c_k.weight * sign[:, None]
    gate_w, up_w = blk.mlp.fc.weight.chunk(2, 0)
    x = model.tok_emb(idx)
    B, T, C = x.shape
    for _ in range(n_loops):
        h = norm(x, blk.attn_norm.weight)
        q = rope((h @ wq.T).view(B, T, H, hd).transpose(1, 2))
        k = rope((h @ wk.T).view(B, T, 1, hd).transpose(1, 2)).expand(B, H, T, hd)
        v = (h @ a.c_v.weight.T).view(B, T, 1, hd).transpose(1, 2).expand(B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=hd ** -0.5)
        x = x + y.transpose(1, 2).reshape(B, T, C) @ a.proj.weight.T
        h = norm(x, blk.mlp_norm.weight)
        x = x + (F.silu(h @ gate_w.T) * (h @ up_w.T)) @ blk.mlp.proj.weight.T
    return norm(x, model.final_norm.weight) @ model.tok_emb.weight.T


def test_plain_prenorm_model_equals_the_pr29_reference_forward():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=1, mlp="swiglu", mlp_hidden=48, plan="1x3",
                      block="plain_prenorm", unet_skips=False, logit_softcap=0.0, init_std=0.02, embed_init_std=0.02)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():  # move the norms off their init so that the weights matter
        for p in (model.blocks[0].attn_norm.weight, model.blocks[0].mlp_norm.weight, model.final_norm.weight):
            p.copy_(1 + 0.3 * torch.randn_like(p))
        model.tok_emb.weight.mul_(20)
    idx = torch.randint(0, 64, (2, 10))
    ref = _pr29_reference_logits(model, idx, 3)
    torch.testing.assert_close(model.logits(idx), ref, rtol=1e-4, atol=1e-5)
    nll = torch.nn.functional.cross_entropy(ref.view(-1, 64), idx.view(-1), reduction="none").view(2, 10)
    torch.testing.assert_close(model(idx, idx), nll, rtol=1e-4, atol=1e-5)


def test_plain_prenorm_has_exactly_the_pr29_tensors():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=1, mlp="swiglu", mlp_hidden=48, plan="1x3",
                      block="plain_prenorm", unet_skips=False)
    names = {n for n, _ in GPT(cfg).named_parameters()}
    assert names == {"tok_emb.weight", "final_norm.weight", "blocks.0.attn_norm.weight", "blocks.0.mlp_norm.weight",
                     *(f"blocks.0.attn.{m}.weight" for m in ("c_q", "c_k", "c_v", "proj")),
                     "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"}  # no q_gain, scales, resid_mix


def test_rms_norm_module_is_the_pr29_formula():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(3, 8)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * torch.arange(8.0)
    torch.testing.assert_close(norm(x), want)


def _loss_and_grads(model, idx):
    model.zero_grad(set_to_none=True)
    loss = model(idx[:, :-1], idx[:, 1:]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_qkv_gives_the_same_loss_and_gradients_as_three_products():
    """model.fused_qkv multiplies x by the stacked [W_q; W_k; W_v] once: same loss and the same
    gradients for c_q, c_k, c_v (float64, so only summation order may differ), and it does run fused."""
    from loopgolf.model import blocks
    torch.manual_seed(0)
    kw = dict(vocab_size=96, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="2")
    plain, fused = GPT(ModelConfig(**kw)).double(), GPT(ModelConfig(**kw, fused_qkv=True)).double()
    fused.load_state_dict(plain.state_dict())
    for m in plain.modules():  # the zero-initialized projections would leave q, k, v gradient-free
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.2)
    fused.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 96, (3, 9))
    calls = []
    linear = blocks.F.linear
    blocks.F.linear = lambda x, w, *a: calls.append(tuple(w.shape)) or linear(x, w, *a)
    try:
        l_f, g_f = _loss_and_grads(fused, idx)
    finally:
        blocks.F.linear = linear
    l_p, g_p = _loss_and_grads(plain, idx)
    assert calls.count((64, 32)) == 2  # one stacked product (32 + 16 + 16 rows) per block
    assert (16, 32) not in calls  # no separate c_k / c_v product
    torch.testing.assert_close(l_f, l_p, rtol=1e-12, atol=1e-12)
    assert g_f.keys() == g_p.keys() and "blocks.0.attn.c_k.weight" in g_f
    for name in g_p:
        torch.testing.assert_close(g_f[name], g_p[name], rtol=1e-10, atol=1e-12)


def test_fused_qkv_runs_the_three_modules_when_they_have_forward_hooks():
    """GPTQ's Hessian hooks and LoRA TTT's adapters sit on c_q/c_k/c_v as forward hooks: they must
    still see their module's call."""
    model = GPT(ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="1",
                            fused_qkv=True))
    seen = []
    attn = model.blocks[0].attn
    for name in ("c_q", "c_k", "c_v"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: seen.append(name))
    idx = torch.randint(0, 64, (1, 5))
    model(idx, idx)
    assert seen == ["c_q", "c_k", "c_v"]


def test_fp32_stream_keeps_the_residual_in_float32_under_autocast():
    """model.fp32_stream: PR #29's fp32 model under autocast adds bf16 matmul outputs to a float32
    residual; without it the stream runs in the autocast dtype (the baseline's bf16 model)."""
    kw = dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=1, mlp="swiglu", mlp_hidden=48, plan="1x3",
              block="plain_prenorm", unet_skips=False, logit_softcap=0.0)
    idx = torch.randint(0, 64, (2, 6))
    seen = {}
    for flag in (False, True):
        model = GPT(ModelConfig(**kw, fp32_stream=flag))
        dtypes = []
        model.blocks[0].register_forward_pre_hook(lambda m, args: dtypes.append(args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx, idx).mean()
        loss.backward()
        seen[flag] = set(dtypes)
        assert len(dtypes) == 3 and torch.isfinite(loss)
    assert seen == {False: {torch.bfloat16}, True: {torch.float32}}


def _random_copy_pair(kw, **flag):
    torch.manual_seed(0)
    plain, folded = GPT(ModelConfig(**kw)).double(), GPT(ModelConfig(**kw, **flag)).double()
    with torch.no_grad():
        for p in plain.parameters():  # zero projections and unit scales would hide a wrong fold
            p.copy_(torch.randn_like(p) * 0.3)
    folded.load_state_dict(plain.state_dict())
    return plain, folded


def test_fold_scales_gives_the_same_loss_and_gradients():
    """model.fold_scales multiplies attn_scale / mlp_scale into the output projections' weights:
    float64 loss and every gradient (projections and the scales themselves) equal the unfolded
    block's, for the baseline, per-virtual-layer scales (PR #927) and LoRA's "out" adapters (PR #21,
    where the attention scale stays on the adapted sum), and the MLP product is the folded one."""
    from loopgolf.model import blocks
    base = dict(vocab_size=96, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48)
    cases = [dict(plan="2"), dict(plan="1x3", per_layer_scales=True), dict(plan="1x3", lora_rank=2),
             dict(plan="1x2", mlp="swiglu")]
    idx = torch.randint(0, 96, (3, 9), generator=torch.Generator().manual_seed(1))
    for case in cases:
        plain, folded = _random_copy_pair({**base, **case}, fold_scales=True)
        weights = []
        linear = blocks.F.linear
        blocks.F.linear = lambda x, w, *a: weights.append(w) or linear(x, w, *a)
        try:
            l_f, g_f = _loss_and_grads(folded, idx)
        finally:
            blocks.F.linear = linear
        l_p, g_p = _loss_and_grads(plain, idx)
        proj = folded.blocks[0].mlp.proj.weight
        assert any(w.shape == proj.shape and not torch.equal(w, proj) for w in weights), case
        torch.testing.assert_close(l_f, l_p, rtol=1e-12, atol=1e-12)
        assert g_f.keys() == g_p.keys(), case
        assert any("scale" in n for n in g_p), case
        for name in g_p:
            torch.testing.assert_close(g_f[name], g_p[name], rtol=1e-9, atol=1e-11, msg=f"{case} {name}")


def _assert_same_loss_and_grads(model, reference, idx, case) -> None:
    """float64 loss and every gradient of `model` equal `reference`'s on `idx`."""
    l_m, g_m = _loss_and_grads(model, idx)
    l_r, g_r = _loss_and_grads(reference, idx)
    torch.testing.assert_close(l_m, l_r, rtol=1e-12, atol=1e-12)
    assert g_m.keys() == g_r.keys(), case
    for name in g_r:
        torch.testing.assert_close(g_m[name], g_r[name], rtol=1e-9, atol=1e-11, msg=f"{case} {name}")


def test_attn_bthd_gives_the_same_loss_and_gradients():
    """model.attn_bthd runs QK-norm, RoPE and the q gain on (B, T, H, D) memory and hands attention
    transposed views: float64 loss and every gradient equal the (B, H, T, D) path's, with full and
    partial RoPE, XSA on the attention output, document-isolated attention and PR #29's plain block
    (no QK-norm, no gain); and the q fed to attention is a view of (B, T, H, D) memory."""
    base = dict(vocab_size=96, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48)
    cases = [dict(plan="2"), dict(plan="1x3", rope_dims=4), dict(plan="2", xsa_last=1),
             dict(plan="2", doc_isolated_attn=True),
             dict(plan="2", block="plain_prenorm", unet_skips=False, logit_softcap=0.0)]
    idx = torch.randint(0, 96, (3, 9), generator=torch.Generator().manual_seed(2))
    for case in cases:
        plain, bthd = _random_copy_pair({**base, **case}, attn_bthd=True)
        _assert_same_loss_and_grads(bthd, plain, idx, case)
    attn = bthd.blocks[0].attn
    q, k, v = attn.heads(*(torch.randn(3, 9, n, dtype=torch.float64) for n in attn.qkv_sizes), 3, 9)
    assert q.shape == (3, 4, 9, 8) and q.transpose(1, 2).is_contiguous() and not q.is_contiguous()


def test_fold_scales_runs_a_hooked_projection_as_itself():
    """GPTQ's Hessian hooks must see the projection's real input and output: a hooked Linear is
    called, then scaled, and the model's output is unchanged."""
    kw = dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="2")
    plain, folded = _random_copy_pair(kw, fold_scales=True)
    seen = []
    folded.blocks[1].mlp.proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    idx = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(folded(idx, idx), plain(idx, idx), rtol=1e-12, atol=1e-12)
    assert seen == [torch.Size([2, 5, 32])]


def test_attn_expand_kv_gives_the_same_loss_and_gradients():
    """model.attn_expand_kv copies GQA's k and v out to every query head before attention: float64
    loss and every gradient equal grouped attention's, alone and with attn_bthd, XSA (which expands v
    itself) and PR #29's plain block; each query head h reads kv head h // groups; MHA is untouched."""
    from loopgolf.model.blocks import expand_kv_heads, expanded_kv_attend

    base = dict(vocab_size=96, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48)
    cases = [dict(plan="2"), dict(plan="2", attn_bthd=True), dict(plan="1x3", xsa_last=1),
             dict(plan="2", block="plain_prenorm", unet_skips=False, logit_softcap=0.0)]
    idx = torch.randint(0, 96, (3, 9), generator=torch.Generator().manual_seed(3))
    for case in cases:
        plain, expanded = _random_copy_pair({**base, **case}, attn_expand_kv=True)
        assert expanded.blocks[0].default_ops()["attend"] is expanded_kv_attend, case
        _assert_same_loss_and_grads(expanded, plain, idx, case)
    k = torch.arange(2 * 3 * 5 * 4, dtype=torch.float64).view(2, 3, 5, 4)  # (B, KV, T, D)
    e = expand_kv_heads(k, 2)
    assert e.shape == (2, 6, 5, 4) and e.transpose(1, 2).is_contiguous()
    for h in range(6):
        assert torch.equal(e[:, h], k[:, h // 2])
    q = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(expanded_kv_attend(q, k / 100, k / 100, None),
                               torch.nn.functional.scaled_dot_product_attention(q, k / 100, k / 100, is_causal=True))
