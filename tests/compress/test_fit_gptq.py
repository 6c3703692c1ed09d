"""GPTQ-aware budget fitter: SDClip k searched with GPTQ re-run per trial, under the target,
deterministic, the returned config reproducing the bytes, pruning as the last resort."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from loopgolf.compress.artifact import pack, unpack
from loopgolf.compress.fit import FitError
from loopgolf.compress.fit_gptq import WINDOW, fit_gptq, grid_weights, next_k
from loopgolf.compress.gptq import gptq_quantize_state
from loopgolf.config import QuantConfig

START_K = 6.0
CODE = 1000


def setup(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Three 96x128 matrices with random SPD Hessians (X^T X of correlated inputs), one control."""
    g = torch.Generator().manual_seed(seed)
    state = {f"blocks.{i}.mlp.fc.weight": torch.randn(96, 128, generator=g) * 0.02 for i in range(3)}
    hess = {}
    for name in sorted(state):
        mix = torch.randn(128, 128, generator=g) * torch.linspace(0.1, 2.0, 128)
        x = torch.randn(512, 128, generator=g) @ mix
        hess[name] = x.T @ x
    state["blocks.0.attn_scale"] = torch.ones(128)
    return state, hess


def qcfg(codec: str = "zlib", **kw) -> QuantConfig:
    return dataclasses.replace(QuantConfig(scheme="int6_row", clip="sdclip", sdclip_k=START_K,
                                           row_scale_min=0.0, codec=codec,
                                           passthrough_max_numel=1000), **kw)


def gptq_total(state, hess, q: QuantConfig, meta) -> int:
    return len(pack(state, meta, q, precomputed=gptq_quantize_state(state, hess, q))) + CODE


def test_next_k_follows_the_log_model() -> None:
    size = lambda k: 100_000 - 2_000 * math.log2(k)  # noqa: E731
    # one point: the slope guess; two bracketing points: interpolation, exact on the model
    assert next_k([(4.0, size(4.0))], size(16.0), 2_000.0, (2.0, 64.0)) == 16.0
    assert next_k([(4.0, size(4.0)), (32.0, size(32.0))], size(8.0), 1.0, (2.0, 64.0)) == 8.0
    # the measured slope replaces a wrong guess; k stays in bounds
    assert next_k([(4.0, size(4.0)), (5.0, size(5.0))], size(10.0), 50.0, (2.0, 64.0)) == 10.0
    assert next_k([(4.0, size(4.0))], 0.0, 2_000.0, (2.0, 64.0)) == 64.0
    assert next_k([(4.0, size(4.0))], 1e9, 2_000.0, (2.0, 64.0)) == 2.0


def test_fit_raises_k_into_the_window_deterministically() -> None:
    state, hess = setup()
    q = qcfg()
    full = gptq_total(state, hess, q, {"k": START_K})
    target = int(full * 0.85)
    meta = lambda c: {"k": c.sdclip_k}  # noqa: E731  (the embedded config names the chosen k)
    res = fit_gptq(state, hess, q, target, CODE, meta)
    assert res.fits and res.total_bytes == len(res.blob) + CODE <= target
    assert res.total_bytes >= target - 2 * WINDOW * target  # just under, not far under
    assert res.qcfg.sdclip_k > START_K and res.qcfg.prune_frac == 0.0
    assert res.qcfg == qcfg(sdclip_k=res.qcfg.sdclip_k)  # only k moved
    assert res.trials[0]["sdclip_k"] == START_K and res.trials[0]["total_bytes"] == full
    assert 2 <= len(res.trials) <= 4
    assert all({"sdclip_k", "total_bytes", "seconds"} <= set(t) for t in res.trials)
    again = fit_gptq(state, hess, q, target, CODE, meta)
    assert again.blob == res.blob and again.qcfg == res.qcfg
    assert [t["total_bytes"] for t in again.trials] == [t["total_bytes"] for t in res.trials]
    # the returned config reproduces the bytes, and the artifact records it
    parts = gptq_quantize_state(state, hess, res.qcfg)
    assert pack(state, meta(res.qcfg), res.qcfg, precomputed=parts) == res.blob
    back, got_meta = unpack(res.blob)
    assert got_meta == {"k": res.qcfg.sdclip_k} and set(back) == set(state)


def test_fit_lowers_k_when_there_is_room() -> None:
    state, hess = setup()
    target = int(gptq_total(state, hess, qcfg(), {}) * 1.1)
    res = fit_gptq(state, hess, qcfg(), target, CODE, {})
    assert res.qcfg.sdclip_k < START_K  # a finer grid, spending the room
    assert target - 2 * WINDOW * target <= res.total_bytes <= target


def test_best_codec_trials_are_estimated_and_the_real_size_is_checked() -> None:
    state, hess = setup()
    q = qcfg("best")
    target = int(gptq_total(state, hess, q, {}) * 0.85)
    res = fit_gptq(state, hess, q, target, CODE, {})
    assert res.total_bytes == len(res.blob) + CODE <= target and res.qcfg.codec == "best"
    assert not res.trials[0]["exact"] and res.trials[0]["fast_bytes"] > 0  # entropy-estimated trials ...
    assert any(t["stage"] == "real" for t in res.trials)  # ... calibrated by a real pack ...
    assert any(t["exact"] and t["total_bytes"] == res.total_bytes for t in res.trials)
    parts = gptq_quantize_state(state, hess, res.qcfg)
    assert pack(state, {}, res.qcfg, precomputed=parts) == res.blob  # ... the result is real
    assert fit_gptq(state, hess, q, target, CODE, {}).blob == res.blob


def test_prunes_the_largest_k_when_k_alone_cannot_fit() -> None:
    state, hess = setup()
    at_max = gptq_total(state, hess, qcfg(sdclip_k=64.0), {})
    target = at_max - 200
    res = fit_gptq(state, hess, qcfg(), target, CODE, {})
    assert res.total_bytes <= target and res.qcfg.prune_frac > 0
    assert res.qcfg.sdclip_k == max(t["sdclip_k"] for t in res.trials) > 32.0  # the coarsest grid
    assert any(t["stage"] == "prune" for t in res.trials)
    parts = gptq_quantize_state(state, hess, res.qcfg)
    assert pack(state, {}, res.qcfg, precomputed=parts) == res.blob


def test_impossible_targets_and_wrong_configs_raise() -> None:
    state, hess = setup()
    with pytest.raises(FitError, match="cannot fit under 100 B with GPTQ"):
        fit_gptq(state, hess, qcfg(), 100, 0, {})
    with pytest.raises(FitError, match="cannot fit under 100 B"):
        fit_gptq(state, hess, qcfg(clip="search"), 100, 0, {})
    with pytest.raises(FitError, match="Hessians"):
        fit_gptq(state, {}, qcfg(), 10_000, 0, {})
    assert grid_weights(state, qcfg()) == 3 * 96 * 128


@pytest.mark.parametrize("squeeze", ["prune", "widths"])
def test_a_clip_without_k_prunes_then_lowers_the_widths_with_gptq(squeeze: str) -> None:
    """PR #1290's order (GPTQ, then +-1 pruning), one bit fewer when pruning alone cannot fit."""
    state, hess = setup()
    q = qcfg(clip="search", bits_rules="mlp=6")
    full = gptq_total(state, hess, q, {})
    pruned_all = gptq_total(state, hess, dataclasses.replace(q, prune_frac=1.0), {})
    target = (full + pruned_all) // 2 if squeeze == "prune" else pruned_all - 2000
    res = fit_gptq(state, hess, q, target, CODE, {})
    assert res.total_bytes == len(res.blob) + CODE <= target
    if squeeze == "prune":
        assert res.qcfg.bits_rules == "mlp=6" and 0 < res.qcfg.prune_frac < 1
    else:
        assert res.qcfg.bits_rules == "mlp=5" and any(t.get("stage") == "widths" for t in res.trials)
    parts = gptq_quantize_state(state, hess, res.qcfg)  # the returned config reproduces the bytes
    assert pack(state, {}, res.qcfg, precomputed=parts) == res.blob
