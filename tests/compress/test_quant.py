"""Quantization schemes: error bounds, exactness, baseline equivalence (the rules table: test_rules.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loopgolf.compress import quant
from loopgolf.compress.quant import QUANTIZERS, row_quantile
from loopgolf.config import QuantConfig

FP16_SLACK = 2.0 ** -10  # fp16 keeps 11 significant bits: relative rounding error <= 2**-11


def weights(rows: int = 64, cols: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 3
    w[3, 7] = 40.0  # an outlier that the percentile clip must cut
    w[5] = 0.0  # an all-zero row
    return w


def roundtrip(scheme: str, t: torch.Tensor, qcfg: QuantConfig | None = None):
    qcfg = QuantConfig() if qcfg is None else qcfg
    parts = QUANTIZERS[scheme].quantize(t, qcfg)
    return parts, QUANTIZERS[scheme].dequantize(parts, tuple(t.shape), quant.dtype_name(t.dtype))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("floor", [1.0 / 127.0, 0.0])
def test_int_row_error_bound(bits: int, floor: float) -> None:
    qcfg = QuantConfig(row_scale_min=floor)
    w = weights()
    parts, deq = roundtrip(f"int{bits}_row", w, qcfg)
    qmax = 2 ** (bits - 1) - 1
    q, scale = parts["q"], parts["scale"]
    assert q.dtype == np.int8 and q.shape == w.shape and scale.dtype == np.float16
    assert scale.shape == (w.shape[0],) and (scale > 0).all()
    assert np.abs(q).max() <= qmax
    assert deq.dtype == torch.float32 and deq.shape == w.shape
    clip = torch.quantile(w.abs(), qcfg.clip_percentile / 100.0, dim=1)
    s = torch.from_numpy(scale).float()[:, None]
    inside = w.abs() <= clip[:, None]
    err = (w - deq).abs()
    bound = s * (0.5 + qmax * FP16_SLACK) + 1e-7
    assert bool((err <= bound)[inside].all())
    assert bool((deq.abs() <= qmax * s + 1e-6).all())
    assert bool((deq[~inside] * w[~inside] >= 0).all())  # clipped entries keep their sign
    assert bool((deq[5] == 0).all())  # zero row: no NaN, exact zeros
    assert not inside[3, 7]


def test_int8_row_reproduces_baseline_formula() -> None:
    w = weights(seed=1) * 0.05
    parts, deq = roundtrip("int8_row", w)
    clip = torch.quantile(w.abs(), 0.9999984, dim=1)
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)  # the baseline floors row scales at 1/127
    clipped = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
    assert np.array_equal(parts["q"], q.numpy())
    assert np.array_equal(parts["scale"], scale.half().numpy())
    assert torch.equal(deq, q.float() * scale.half().float()[:, None])


def test_row_scale_min_zero_uses_full_resolution() -> None:
    w = weights(seed=2) * 1e-3
    _, deq_floor = roundtrip("int8_row", w)
    _, deq_fine = roundtrip("int8_row", w, QuantConfig(row_scale_min=0.0))
    assert (w - deq_fine).abs().max() < (w - deq_floor).abs().max() / 10


def test_int8_tensor_error_bound_and_zeros() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 50, 40, generator=g)
    parts, deq = roundtrip("int8_tensor", w)
    assert parts["q"].shape == w.shape and parts["scale"].shape == () and parts["scale"].dtype == np.float32
    s = float(parts["scale"])
    clip = float(torch.quantile(w.abs().flatten(), 0.9999984))
    assert s == np.float32(clip / 127.0)
    inside = w.abs() <= clip
    assert bool(((w - deq).abs() <= s * 0.5 * (1 + 1e-5))[inside].all())
    parts, deq = roundtrip("int8_tensor", torch.zeros(3, 4, 5))
    assert float(parts["scale"]) == 1.0 and bool((deq == 0).all())


def test_cast_schemes_exact_where_exact() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 9, generator=g)
    assert torch.equal(roundtrip("fp32", x)[1], x)
    assert torch.equal(roundtrip("fp32", x.bfloat16())[1], x.bfloat16().float())
    assert torch.equal(roundtrip("fp16", x.half())[1], x.half().float())
    parts, deq = roundtrip("fp16", x)
    assert parts["data"].dtype == np.float16 and torch.equal(deq, x.half().float())
    assert deq.dtype == torch.float32


@pytest.mark.parametrize("t", [
    torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
    torch.tensor([True, False, True]),
    torch.tensor(7, dtype=torch.int32),
    torch.randn(3, 4).bfloat16(),
    torch.randn(5, dtype=torch.float64),
    torch.randint(0, 255, (4, 4), dtype=torch.uint8),
    torch.randn(2, 3).half(),
    torch.zeros(0, 3),
], ids=lambda t: f"{t.dtype}{list(t.shape)}")
def test_raw_is_exact_for_any_dtype(t: torch.Tensor) -> None:
    _, back = roundtrip("raw", t)
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back, t)  # no NaNs here, so equality means bit-exact


def test_quantize_is_deterministic() -> None:
    w = weights(seed=5)
    for scheme in ("int8_row", "int4_row", "int8_tensor", "fp16"):
        a = QUANTIZERS[scheme].quantize(w, QuantConfig())
        b = QUANTIZERS[scheme].quantize(w.clone(), QuantConfig())
        assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_bad_inputs_are_refused() -> None:
    w = weights()
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        QUANTIZERS["int8_row"].quantize(w, QuantConfig())
    with pytest.raises(ValueError, match="2-D"):
        QUANTIZERS["int8_row"].quantize(torch.randn(4, 4, 4), QuantConfig())
    with pytest.raises(ValueError, match="float"):
        QUANTIZERS["fp16"].quantize(torch.arange(3), QuantConfig())
    parts = QUANTIZERS["int8_row"].quantize(torch.randn(4, 8), QuantConfig())
    with pytest.raises(ValueError):
        QUANTIZERS["int8_row"].dequantize(parts, (4, 9))
    with pytest.raises(ValueError):
        QUANTIZERS["int8_row"].dequantize({"q": parts["q"]}, (4, 8))
    with pytest.raises(ValueError):
        QUANTIZERS["int8_row"].dequantize({**parts, "scale": parts["scale"].astype(np.float32)}, (4, 8))


def test_quantile_chunking_and_fallback_match_torch(monkeypatch) -> None:
    g = torch.Generator().manual_seed(6)
    a = torch.randn(33, 257, generator=g).abs()
    want = torch.quantile(a, 0.9999984, dim=1)
    monkeypatch.setattr(quant, "_QUANTILE_MAX_NUMEL", 1000)  # chunks of 3 rows
    assert torch.equal(row_quantile(a, 0.9999984), want)
    monkeypatch.setattr(quant, "_QUANTILE_MAX_NUMEL", 100)  # rows too long: sort fallback
    assert torch.equal(row_quantile(a, 0.9999984), want)
    for q in (0.0, 0.25, 0.5, 0.9999984, 1.0):
        assert quant.flat_quantile(a, q) == float(torch.quantile(a.flatten(), q))


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_search_clip_never_worse_than_any_candidate(bits: int) -> None:
    w = weights(seed=3)
    search = QuantConfig(clip="search", row_scale_min=0.0)
    _, deq = roundtrip(f"int{bits}_row", w, search)
    err = ((deq - w) ** 2).sum(dim=1)
    for pct in quant.SEARCH_PERCENTILES:
        _, cand = roundtrip(f"int{bits}_row", w, QuantConfig(clip_percentile=pct, row_scale_min=0.0))
        assert bool((err <= ((cand - w) ** 2).sum(dim=1) * (1 + 1e-3) + 1e-9).all())


def test_sdclip_scale_is_k_std_over_qmax() -> None:
    w = weights(seed=4)
    w[5] = torch.linspace(-1, 1, 300)  # no all-zero row here
    qcfg = QuantConfig(clip="sdclip", sdclip_k=3.0, row_scale_min=0.0)
    parts, deq = roundtrip("int6_row", w, qcfg)
    expect = (3.0 * w.std(dim=1) / 31).half()
    assert torch.equal(torch.from_numpy(parts["scale"]), expect)
    s = expect.float()[:, None]
    inside = w.abs() <= 3.0 * w.std(dim=1)[:, None]
    assert bool(((w - deq).abs() <= s * (0.5 + 31 * FP16_SLACK) + 1e-7)[inside].all())
    # larger k: coarser grid, fewer distinct values -> the knob that trades size for error
    wide, _ = roundtrip("int6_row", w, QuantConfig(clip="sdclip", sdclip_k=12.0, row_scale_min=0.0))
    assert len(np.unique(wide["q"])) < len(np.unique(parts["q"]))


def test_ternary_absmean() -> None:
    w = weights(seed=5)
    parts, deq = roundtrip("ternary_row", w)
    gamma = w.abs().mean(dim=1).clamp(min=2.0 ** -14)
    assert set(np.unique(parts["q"]).tolist()) <= {-1, 0, 1}
    assert torch.equal(torch.from_numpy(parts["q"]).float(),
                       torch.clamp(torch.round(w / gamma[:, None]), -1, 1))
    assert torch.equal(torch.from_numpy(parts["scale"]), gamma.half())
    assert bool((deq[5] == 0).all())


def test_row_quantiles_match_row_quantile(monkeypatch) -> None:
    """One sort for every candidate percentile gives the same bits as one quantile call each."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(33, 257, generator=g).abs()
    qs = (0.9999, 0.99995, 0.99999, 0.999995, 0.999999, 1.0)
    for limit in (1 << 24, 1000, 100):  # one block, blocks of 3 rows, the sort fallback
        monkeypatch.setattr(quant, "_QUANTILE_MAX_NUMEL", limit)
        got = quant.row_quantiles(a, qs)
        assert all(torch.equal(got[i], torch.quantile(a, q, dim=1)) for i, q in enumerate(qs))


def test_level_grid_is_plus_minus_l_and_q63_is_int7() -> None:
    """PR #1453's levels: q16_row spans -16..16 (its "int5"), q63_row is int7_row's grid."""
    w = weights(seed=8)
    qcfg = QuantConfig(row_scale_min=0.0)
    parts, deq = roundtrip("q16_row", w, qcfg)
    assert np.abs(parts["q"]).max() == 16 and parts["q"].min() == -16
    clip = torch.quantile(w.abs(), qcfg.clip_percentile / 100.0, dim=1)
    assert torch.equal(torch.from_numpy(parts["scale"]), (clip / 16).clamp(min=2.0 ** -14).half())
    inside = w.abs() <= clip[:, None]
    s = torch.from_numpy(parts["scale"]).float()[:, None]
    assert bool(((w - deq).abs() <= s * (0.5 + 16 * FP16_SLACK) + 1e-7)[inside].all())
    int7, _ = roundtrip("int7_row", w, qcfg)
    q63, _ = roundtrip("q63_row", w, qcfg)
    assert all(np.array_equal(int7[k], q63[k]) for k in ("q", "scale"))
    with pytest.raises(ValueError, match="1..127"):
        quant.LevelsRowQuantizer(128)


def test_search_percentiles_replace_the_candidates() -> None:
    """quant.search_percentiles (PR #1453's five) is the candidate set: each row takes the clip of
    the candidate with the least squared error, computed here by hand."""
    w = weights(seed=9)
    pcts = (99.99, 99.995, 99.999, 99.9995, 99.9999)
    qcfg = QuantConfig(clip="search", row_scale_min=0.0, search_percentiles=",".join(map(str, pcts)))
    assert quant.search_percentiles(qcfg) == pcts
    assert quant.search_percentiles(QuantConfig()) == quant.SEARCH_PERCENTILES
    parts, _ = roundtrip("q16_row", w, qcfg)
    best_err = torch.full((w.shape[0],), float("inf"))
    best_scale = torch.zeros(w.shape[0])
    for p in pcts:
        clip = torch.quantile(w.abs(), p / 100.0, dim=1)
        s = (clip / 16).clamp(min=2.0 ** -14)
        q = torch.clamp(torch.round(torch.clamp(w, -clip[:, None], clip[:, None]) / s[:, None]), -16, 16)
        err = ((q * s.half().float()[:, None] - w) ** 2).sum(dim=1)
        best_scale = torch.where(err < best_err, s, best_scale)
        best_err = torch.minimum(err, best_err)
    assert torch.equal(torch.from_numpy(parts["scale"]), best_scale.half())
    for bad in ("99.9,abc", "40,99", "99.9,101"):
        with pytest.raises(ValueError, match="quant.search_percentiles"):
            QuantConfig(search_percentiles=bad).validate()


@pytest.mark.parametrize("bits", [6, 8])
def test_row_scale_min_qmax_floors_each_grid_at_one_over_its_qmax(bits: int) -> None:
    """PR #927's quantizer (L318): scale = clamp_min(clip / qmax, 1 / qmax) at every width, so a row
    of small weights gets step 1/31 at int6 and 1/127 at int8; a row of large weights is untouched."""
    qmax = 2 ** (bits - 1) - 1
    w = torch.cat([weights(seed=3)[:4] * 1e-3, weights(seed=4)[:4] * 30.0])
    qcfg = QuantConfig(row_scale_min=0.0, row_scale_min_qmax=True)
    parts = QUANTIZERS[f"int{bits}_row"].quantize(w, qcfg)
    scale = torch.from_numpy(parts["scale"].astype(np.float32))
    assert torch.equal(scale[:4], torch.full((4,), 1.0 / qmax).half().float())
    plain = QUANTIZERS[f"int{bits}_row"].quantize(w, QuantConfig(row_scale_min=0.0))
    assert np.array_equal(parts["scale"][4:], plain["scale"][4:]) and (plain["scale"][:4] < 1.0 / qmax).all()


def test_qat_trains_without_the_export_only_qmax_floor() -> None:
    from loopgolf.compress.qat import QatWeights

    block = torch.nn.Module()
    block.mlp = torch.nn.Module()
    block.mlp.fc = torch.nn.Linear(64, 64, bias=False)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([block])
    with torch.no_grad():
        block.mlp.fc.weight.mul_(1e-2)  # rows far below the 1/31 floor
    qcfg = QuantConfig(scheme="int6_row", qat="ste", row_scale_min=0.0, row_scale_min_qmax=True,
                       passthrough_max_numel=0)
    qat = QatWeights(model, qcfg)
    assert qat.names == ["blocks.0.mlp.fc.weight"]
    assert qat.qcfg.row_scale_min_qmax is False and qcfg.row_scale_min_qmax is True
    raw = block.mlp.fc.weight.detach().clone()
    with qat.applied():
        assert (block.mlp.fc.weight - raw).abs().max() < raw.abs().max() / 31  # a fine grid, not step 1/31