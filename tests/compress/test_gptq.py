"""GPTQ: grid and scales of the row quantizers, lower layer-output error than rounding, Hessians
summed over every visit of a shared layer, self-generated calibration."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from loopgolf.compress.artifact import pack, unpack
from loopgolf.compress.gptq import (
    collect_hessians,
    gptq_quantize_state,
    gptq_quantize_weight,
    sample_calibration,
)
from loopgolf.compress.quant import QUANTIZERS
from loopgolf.config import ModelConfig, QuantConfig
from loopgolf.model.gpt import GPT


def correlated_inputs(n: int = 2048, d: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.05, 2.0, d)[:, None]
    return torch.randn(n, d, generator=g) @ mix


def test_gptq_beats_round_to_nearest_on_layer_output() -> None:
    x = correlated_inputs()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g) * 0.05
    qcfg = QuantConfig(scheme="int4_row", row_scale_min=0.0, passthrough_max_numel=16)
    state = {"blocks.0.mlp.fc.weight": w}
    rtn = QUANTIZERS["int4_row"].dequantize(QUANTIZERS["int4_row"].quantize(w, qcfg), (64, 96))
    parts = gptq_quantize_state(state, {"blocks.0.mlp.fc.weight": x.T @ x}, qcfg)["blocks.0.mlp.fc.weight"][1]
    gq = QUANTIZERS["int4_row"].dequantize(parts, (64, 96))
    assert torch.equal(torch.from_numpy(parts["scale"]),
                       torch.from_numpy(QUANTIZERS["int4_row"].quantize(w, qcfg)["scale"]))
    assert int(abs(parts["q"]).max()) <= 7
    err_rtn = ((rtn - w) @ x.T).norm()
    err_gptq = ((gq - w) @ x.T).norm()
    assert err_gptq < 0.8 * err_rtn, (float(err_gptq), float(err_rtn))
    back, _ = unpack(pack(state, {}, qcfg, precomputed=gptq_quantize_state(
        state, {"blocks.0.mlp.fc.weight": x.T @ x}, qcfg)))
    assert torch.equal(back["blocks.0.mlp.fc.weight"], gq)


def test_gptq_identity_hessian_equals_rounding_and_handles_dead_columns() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 20, generator=g)
    scale = torch.full((8,), 0.25)
    q = gptq_quantize_weight(w, torch.eye(20), scale, qmax=7, damp=0.0)
    assert torch.equal(q, torch.clamp(torch.round(w / 0.25), -7, 7).to(torch.int8))
    h = torch.eye(20)
    h[3, 3] = 0.0  # an input that never fires: its column quantizes to zero
    q = gptq_quantize_weight(w, h, scale, qmax=7, block=6)
    assert bool((q[:, 3] == 0).all())


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.fc = nn.Linear(4, 4, bias=False)
        self.mtp_heads = nn.ModuleList([nn.Module()])
        self.mtp_heads[0].proj = nn.Linear(4, 4, bias=False)  # training-only: no Hessian

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.mlp.fc
        return self.mtp_heads[0].proj(lin(torch.tanh(lin(x))))  # the same layer visited twice


def test_shared_layer_accumulates_every_visit() -> None:
    torch.manual_seed(0)
    m = Shared()
    xs = [torch.randn(3, 5, 4) for _ in range(2)]
    hess = collect_hessians(m, xs, "cpu")
    expect = torch.zeros(4, 4)
    with torch.no_grad():
        for x in xs:
            a = x.reshape(-1, 4)
            b = torch.tanh(m.mlp.fc(x)).reshape(-1, 4)
            expect += a.T @ a + b.T @ b
    assert list(hess) == ["mlp.fc.weight"]
    assert torch.allclose(hess["mlp.fc.weight"], expect, atol=1e-5)
    assert not m.mlp.fc._forward_hooks  # hooks removed


def test_gpt_hessians_and_self_calibration() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, dim=16, n_heads=2, n_kv_heads=1, mlp_hidden=32, plan="1x3"))
    seqs = sample_calibration(model, n_seqs=3, seq_len=6, temperature=0.8, bos_id=1, batch=2)
    assert [tuple(s.shape) for s in seqs] == [(2, 6), (1, 6)]
    assert all(bool((s[:, 0] == 1).all()) and int(s.max()) < 64 for s in seqs)
    again = sample_calibration(model, n_seqs=3, seq_len=6, temperature=0.8, bos_id=1, batch=2)
    assert all(torch.equal(a, b) for a, b in zip(seqs, again))
    hess = collect_hessians(model, seqs, "cpu")
    assert "blocks.0.attn.c_q.weight" in hess and "blocks.0.mlp.proj.weight" in hess
    assert hess["blocks.0.mlp.proj.weight"].shape == (32, 32)
    qcfg = QuantConfig(scheme="int6_row", passthrough_max_numel=16, row_scale_min=0.0)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    parts = gptq_quantize_state(state, hess, qcfg)
    assert set(parts) == set(hess)  # every hooked matrix is a row-grid tensor here
    back, _ = unpack(pack(state, {}, qcfg, precomputed=parts))
    assert set(back) == set(state)


def test_tied_embedding_hessian_is_the_heads_input_and_gets_its_own_k() -> None:
    """quant.gptq_embed (#1493 L239-243, L262): tok_emb.weight's Hessian is sum h^T h over the final
    normed hidden states (the tied head computes h W^T); quant.sdclip_k_embed = 20 sets its scales."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, dim=16, n_heads=2, n_kv_heads=1, mlp_hidden=32, plan="2"))
    x = [torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (1, 8))]
    hess = collect_hessians(model, x, "cpu", embed=True)
    assert "unembed" not in vars(model)  # the instance wrapper is gone again
    with torch.no_grad():
        hs = [model._hidden(b, model._stage_layers[-1]).reshape(-1, 16) for b in x]
    want = sum(h.T @ h for h in hs)
    assert torch.allclose(hess["tok_emb.weight"], want, rtol=1e-5, atol=1e-5)
    assert "tok_emb.weight" not in collect_hessians(model, x, "cpu")  # off by default
    qcfg = QuantConfig(scheme="int6_row", bits_rules="attn|mlp=6,tok_emb=8", clip="sdclip", sdclip_k=12.85,
                       sdclip_k_embed=20.0, passthrough_max_numel=64, row_scale_min=0.0, gptq_embed=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    parts = gptq_quantize_state(state, hess, qcfg)
    scheme, emb = parts["tok_emb.weight"]
    w = state["tok_emb.weight"]
    assert scheme == "int8_row"
    assert torch.allclose(torch.from_numpy(emb["scale"]).float(), (20.0 * w.std(dim=1) / 127).half().float())
    _, cq = parts["blocks.0.attn.c_q.weight"]
    wq = state["blocks.0.attn.c_q.weight"]
    assert torch.allclose(torch.from_numpy(cq["scale"]).float(), (12.85 * wq.std(dim=1) / 31).half().float())
    untied = GPT(ModelConfig(vocab_size=64, dim=16, n_heads=2, n_kv_heads=1, mlp_hidden=32, plan="2",
                             tie_embeddings=False))
    with pytest.raises(ValueError, match="quant.gptq_embed"):
        collect_hessians(untied, x, "cpu", embed=True)
