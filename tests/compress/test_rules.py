"""Storage rules: the PARAM_KINDS storage column resolved like the challenge baseline, bits rules,
training-only tensors left out, one error listing every offender, every tensor exactly one scheme."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loopgolf.compress.quant import QUANTIZERS, RowGridQuantizer, dtype_name
from loopgolf.compress.rules import (assign_schemes, grid_quantizers, quantize_state, rule_scheme, tensor_qcfg,
                                     storage_scheme)
from loopgolf.config import QuantConfig
from loopgolf.model.params import PARAM_KINDS


def baseline_like_state() -> dict[str, torch.Tensor]:
    return {
        "tok_emb.weight": torch.randn(1024, 512),
        "blocks.0.attn.c_q.weight": torch.randn(512, 512),
        "blocks.0.attn.q_gain": torch.ones(8),
        "blocks.0.attn_scale": torch.ones(512),
        "blocks.0.mlp_scale": torch.ones(512),
        "blocks.0.resid_mix": torch.ones(2, 512),
        "skip_weights": torch.ones(4, 512),
        "loop_embed": torch.zeros(12, 512),  # control: fp32, as it is trained (was fp16)
        "ve_scales": torch.zeros(12, 2, 512),
        "bigram.proj.weight": torch.randn(64, 64),
        "blocks.1.mlp.fc.weight": torch.randn(256, 256),  # exactly 65,536 elements: passed through
        "blocks.1.mlp.proj.weight": torch.randn(1, 65537),
        "blocks.0.mlp.fc.weight": torch.randn(1024, 512).bfloat16(),
        "lora.q_a": torch.randn(12, 16, 512),  # 98,304 elements, 3-D: one int8 scale
        "lora.q_b": torch.zeros(12, 512, 4),  # 24,576: fp16
        "layer_resid_mix": torch.randn(300, 2, 300),  # control name but large: quantized (baseline)
        "mtp_heads.0.proj.weight": torch.randn(512, 512),  # training-only: never ships
        "step": torch.tensor(12, dtype=torch.int64),
    }


def test_assign_schemes_matches_baseline() -> None:
    got = assign_schemes(baseline_like_state(), QuantConfig())
    assert got == {
        "tok_emb.weight": "int8_row", "blocks.0.attn.c_q.weight": "int8_row",
        "blocks.0.attn.q_gain": "fp32", "blocks.0.attn_scale": "fp32", "blocks.0.mlp_scale": "fp32",
        "blocks.0.resid_mix": "fp32", "skip_weights": "fp32", "loop_embed": "fp32",
        "ve_scales": "fp32", "bigram.proj.weight": "fp16", "blocks.1.mlp.fc.weight": "fp16",
        "blocks.1.mlp.proj.weight": "int8_row", "blocks.0.mlp.fc.weight": "int8_row",
        "lora.q_a": "int8_tensor", "lora.q_b": "fp16", "layer_resid_mix": "int8_tensor",
        "step": "raw",
    }
    got = assign_schemes(baseline_like_state(), QuantConfig(scheme="int5_row"))
    assert got["tok_emb.weight"] == "int5_row" and got["lora.q_a"] == "int8_tensor"
    grid = grid_quantizers(baseline_like_state(), QuantConfig(scheme="int5_row"))
    assert set(grid) == {"tok_emb.weight", "blocks.0.attn.c_q.weight", "blocks.1.mlp.proj.weight",
                         "blocks.0.mlp.fc.weight"}
    assert all(isinstance(q, RowGridQuantizer) and q.name == "int5_row" for q in grid.values())


def test_training_only_tensors_never_reach_the_artifact() -> None:
    state = baseline_like_state()
    out = quantize_state(state, QuantConfig(passthrough_max_numel=1 << 30))
    assert "mtp_heads.0.proj.weight" not in out and set(out) == set(state) - {"mtp_heads.0.proj.weight"}
    with pytest.raises(ValueError, match="not in the shipped state"):
        quantize_state(state, QuantConfig(), {"mtp_heads.0.proj.weight": ("fp16", {})})


def test_storage_rules_by_size_and_shape() -> None:
    q = QuantConfig(passthrough_max_numel=10)
    small, big2, big3 = torch.zeros(10), torch.zeros(3, 4), torch.zeros(2, 2, 3)
    assert [storage_scheme("control_fp32", t, q) for t in (small, big2, big3)] == \
        ["fp32", "<quant.scheme>", "int8_tensor"]
    assert [storage_scheme("matrix", t, q) for t in (small, big2, big3)] == \
        ["fp16", "<quant.scheme>", "int8_tensor"]
    assert storage_scheme("none", small, q) is None and storage_scheme("raw", big2, q) == "raw"


def test_rule_table_errors_list_offenders() -> None:
    state = {"blocks.0.attn.c_q.weight": torch.randn(4, 4), "mystery": torch.randn(3),
             "n": torch.tensor(1)}
    overlapping = PARAM_KINDS + (dataclasses.replace(PARAM_KINDS[2], kind="also_attn"),)
    with pytest.raises(ValueError, match=r"c_q\.weight float32\[4, 4\]: rows matched: attn_matrix, "
                                         r"also_attn.*mystery float32\[3\]: rows matched: none"):
        assign_schemes(state, QuantConfig(), overlapping)
    no_buffers = tuple(k for k in PARAM_KINDS if k.kind != "integer_buffer")
    with pytest.raises(ValueError, match=r"n int64\[\]: rows matched: none"):
        assign_schemes({"n": torch.tensor(1)}, QuantConfig(), no_buffers)
    with pytest.raises(ValueError, match="int9_row"):
        assign_schemes({}, QuantConfig(scheme="int9_row"))
    with pytest.raises(ValueError, match="not a tensor"):
        assign_schemes({"x": [1.0]}, QuantConfig())  # type: ignore[dict-item]


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int8,
          torch.bool, torch.uint8]
NAMES = ["blocks.1.attn_scale", "blocks.0.attn.q_gain", "layer_resid_mix", "skip_weights",
         "blocks.0.mlp.fc.weight", "tok_emb.weight", "loop_embed", "cross_repeat_scales",
         "lora.k_b", "smear.gate"]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(NAMES), dtype=st.sampled_from(DTYPES),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=4))
def test_every_tensor_gets_exactly_one_scheme(name: str, dtype: torch.dtype, shape: list[int]) -> None:
    qcfg = QuantConfig(passthrough_max_numel=12)
    t = torch.zeros(shape, dtype=dtype)
    hits = [k for k in PARAM_KINDS if k.matches(name, t)]
    if len(hits) != 1:  # a float name under a shape its row does not allow: refused, by name
        assert t.is_floating_point() and len(hits) == 0
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            assign_schemes({name: t}, qcfg)
        return
    scheme = assign_schemes({name: t}, qcfg)[name]
    parts = QUANTIZERS[scheme].quantize(t, qcfg)
    back = QUANTIZERS[scheme].dequantize(parts, tuple(shape), dtype_name(dtype))
    assert back.shape == t.shape


def test_bits_rules_mixed_precision() -> None:
    state = {"tok_emb.weight": torch.randn(300, 300), "blocks.0.attn.c_q.weight": torch.randn(300, 300),
             "blocks.0.mlp.fc.weight": torch.randn(300, 300), "blocks.0.attn.q_gain": torch.ones(4)}
    qcfg = QuantConfig(bits_rules="mlp=5, attn=6,tok_emb=ternary_row")
    assert assign_schemes(state, qcfg) == {
        "tok_emb.weight": "ternary_row", "blocks.0.attn.c_q.weight": "int6_row",
        "blocks.0.mlp.fc.weight": "int5_row", "blocks.0.attn.q_gain": "fp32"}
    with pytest.raises(ValueError, match=r"tok_emb.weight: quant.bits_rules patterns matched: none"):
        assign_schemes(state, QuantConfig(bits_rules="mlp=5,attn=6"))
    with pytest.raises(ValueError, match=r"c_q.weight: quant.bits_rules patterns matched: attn, c_q"):
        assign_schemes(state, QuantConfig(bits_rules="mlp=5,attn=6,c_q=8,tok=8"))
    for bad in ("mlp=9", "mlp", "=5", "mlp=int3", "(=5"):
        with pytest.raises(ValueError, match="quant.bits_rules"):
            assign_schemes(state, QuantConfig(bits_rules=bad))


def test_bits_rules_level_grids() -> None:
    """PR #1453's widths: "mlp=q16" is the +-16 grid, "attn|emb=q63" the +-63 one (rule_scheme)."""
    state = {"tok_emb.weight": torch.randn(300, 300), "blocks.0.attn.c_q.weight": torch.randn(300, 300),
             "blocks.0.mlp.fc.weight": torch.randn(300, 300), "value_embeds.0.weight": torch.randn(300, 300)}
    got = assign_schemes(state, QuantConfig(bits_rules="mlp=q16,attn|emb=q63"))
    assert got == {"tok_emb.weight": "q63_row", "blocks.0.attn.c_q.weight": "q63_row",
                   "blocks.0.mlp.fc.weight": "q16_row", "value_embeds.0.weight": "q63_row"}
    assert [rule_scheme(v) for v in ("6", "q16", " q63 ", "ternary_row")] == [
        "int6_row", "q16_row", "q63_row", "ternary_row"]
    for bad in ("mlp=q0", "mlp=q128", "mlp=q"):
        with pytest.raises(ValueError, match=r"PATTERN=qL \(L in 1..127\)"):
            assign_schemes(state, QuantConfig(bits_rules=bad))


def test_sdclip_k_embed_applies_to_embedding_kinds_only():
    """#1493: k = 20 for the int8 embedding, 12.85 for the int6 matrices (L262)."""
    qcfg = QuantConfig(scheme="int6_row", bits_rules="attn=6,tok_emb=8", clip="sdclip", sdclip_k=12.85,
                       sdclip_k_embed=20.0, row_scale_min=0.0, passthrough_max_numel=16)
    g = torch.Generator().manual_seed(0)
    state = {"tok_emb.weight": torch.randn(32, 16, generator=g), "blocks.0.attn.c_q.weight": torch.randn(16, 16, generator=g)}
    assert tensor_qcfg("tok_emb.weight", state["tok_emb.weight"], qcfg).sdclip_k == 20.0
    assert tensor_qcfg("blocks.0.attn.c_q.weight", state["blocks.0.attn.c_q.weight"], qcfg) is qcfg
    off = dataclasses.replace(qcfg, sdclip_k_embed=0.0)
    assert tensor_qcfg("tok_emb.weight", state["tok_emb.weight"], off) is off
    out = quantize_state(state, qcfg)
    emb_scale = torch.from_numpy(out["tok_emb.weight"][1]["scale"]).float()
    assert torch.allclose(emb_scale, (20.0 * state["tok_emb.weight"].std(dim=1) / 127).half().float())
    q_scale = torch.from_numpy(out["blocks.0.attn.c_q.weight"][1]["scale"]).float()
    assert torch.allclose(q_scale, (12.85 * state["blocks.0.attn.c_q.weight"].std(dim=1) / 31).half().float())
