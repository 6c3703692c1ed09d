"""Budget fitter and selective +-1 pruning: under the target, deterministic, close to the target."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from loopgolf.compress.artifact import pack, unpack
from loopgolf.compress.fit import fit_to_budget, lower_widths, slow_codec
from loopgolf.compress.prune import prune_ones
from loopgolf.compress.rules import quantize_state
from loopgolf.config import QuantConfig


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"blocks.{i}.mlp.fc.weight": torch.randn(128, 128, generator=g) * 0.02 for i in range(3)} | {
        "blocks.0.attn_scale": torch.ones(128)}


def test_prune_zeroes_the_least_certain_ones() -> None:
    w = {"blocks.0.mlp.fc.weight": torch.tensor([[0.6, -0.7, 1.4, 0.1], [-0.55, 0.9, 2.0, -1.2]])}
    qcfg = QuantConfig(scheme="int4_row", passthrough_max_numel=1, row_scale_min=0.0,
                       clip="sdclip", sdclip_k=7.0)
    quantized = quantize_state(w, qcfg)
    q = quantized["blocks.0.mlp.fc.weight"][1]["q"]
    scale = quantized["blocks.0.mlp.fc.weight"][1]["scale"].astype(np.float32)
    ones = np.argwhere(np.abs(q) == 1)
    keys = sorted((abs(float(w["blocks.0.mlp.fc.weight"][r, c])) / scale[r], r, c) for r, c in ones)
    pruned = prune_ones(quantized, w, 0.5)["blocks.0.mlp.fc.weight"][1]["q"]
    n = round(0.5 * len(keys))
    assert all(pruned[r, c] == 0 for _, r, c in keys[:n])
    assert all(pruned[r, c] == q[r, c] for _, r, c in keys[n:])
    assert (np.abs(pruned) != 1).sum() - (np.abs(q) != 1).sum() == n
    assert quantized["blocks.0.mlp.fc.weight"][1]["q"] is q  # the input is not modified
    assert np.array_equal(prune_ones(quantized, w, 0.0)["blocks.0.mlp.fc.weight"][1]["q"], q)


@pytest.mark.parametrize("clip", ["sdclip", "percentile"])
def test_fit_lands_just_under_target_deterministically(clip: str) -> None:
    qcfg = QuantConfig(scheme="int6_row", clip=clip, sdclip_k=6.0, row_scale_min=0.0, codec="zlib",
                       passthrough_max_numel=1000)
    s = state()
    full = len(pack(s, {"a": 1}, qcfg))
    target = int(full * 0.85) + 1000
    res = fit_to_budget(s, qcfg, target_bytes=target, code_bytes=1000, meta={"a": 1})
    assert res.fits and res.total_bytes == len(res.blob) + 1000 <= target
    assert res.total_bytes > target - 0.01 * full  # just under, not far under
    again = fit_to_budget(s, qcfg, target_bytes=target, code_bytes=1000, meta={"a": 1})
    assert again.blob == res.blob and again.qcfg == res.qcfg
    assert pack(s, {"a": 1}, res.qcfg) == res.blob  # the returned config reproduces the bytes
    back, meta = unpack(res.blob)
    assert meta == {"a": 1} and set(back) == set(s)
    if clip == "sdclip":
        assert res.qcfg.sdclip_k > 6.0 and res.qcfg.prune_frac == 0.0
    else:
        assert res.qcfg.prune_frac > 0.0


def test_fit_steps_bits_down_and_reports_impossible_targets() -> None:
    qcfg = QuantConfig(scheme="int8_row", row_scale_min=0.0, codec="zlib", passthrough_max_numel=1000)
    s = state()
    int6 = len(pack(s, {}, QuantConfig(scheme="int6_row", row_scale_min=0.0, codec="zlib",
                                                passthrough_max_numel=1000)))
    res = fit_to_budget(s, qcfg, target_bytes=int6, max_prune=0.05)
    assert res.fits and res.qcfg.scheme in ("int6_row", "int7_row")
    fitting = fit_to_budget(s, qcfg, target_bytes=10 ** 9)
    assert fitting.qcfg == qcfg and len(fitting.trials) == 1
    with pytest.raises(ValueError, match="cannot fit under 100 B"):
        fit_to_budget(s, qcfg, target_bytes=100)


def test_fit_lowers_every_bits_rule_width() -> None:
    """bits_rules no longer stop the width step: each intN / qL value drops one bit together."""
    qcfg = QuantConfig(bits_rules="mlp.fc=q63,blocks.2=7", row_scale_min=0.0, codec="zlib",
                       passthrough_max_numel=1000)
    s = {k.replace("blocks.2.mlp.fc", "blocks.2.attn.c_q"): v for k, v in state().items()}
    lower = dataclasses.replace(qcfg, bits_rules="mlp.fc=q31,blocks.2=6")
    target = len(pack(s, {}, lower)) + 10
    res = fit_to_budget(s, qcfg, target_bytes=target, max_prune=0.01)
    assert res.fits and res.qcfg.bits_rules == "mlp.fc=q31,blocks.2=6"
    assert lower_widths(QuantConfig(scheme="int2_row", bits_rules="x=ternary_row,y=q1")) is None


def test_slow_codec_trials_are_estimates_and_the_result_is_real() -> None:
    """Under lzma the trials pack with zstd-3 (estimates); the returned blob is packed for real."""
    qcfg = QuantConfig(scheme="int6_row", clip="sdclip", sdclip_k=6.0, row_scale_min=0.0,
                       codec="lzma", passthrough_max_numel=1000)
    assert slow_codec(qcfg) and not slow_codec(dataclasses.replace(qcfg, codec="zstd", level=9))
    s = state()
    full = len(pack(s, {"a": 1}, qcfg))
    target = int(full * 0.85)
    res = fit_to_budget(s, qcfg, target_bytes=target, meta={"a": 1})
    assert res.total_bytes == len(res.blob) <= target and res.qcfg.sdclip_k > 6.0
    assert pack(s, {"a": 1}, res.qcfg) == res.blob  # real lzma bytes, reproducible
    assert not res.trials[0]["exact"]  # 15 % over on the entropy alone: the start is not packed
    near = fit_to_budget(s, qcfg, target_bytes=full - 20, meta={"a": 1})
    assert near.trials[0]["exact"] and near.trials[0]["total_bytes"] == full  # a close start is
    assert near.total_bytes <= full - 20 and any(not t["exact"] for t in near.trials)
    exact = fit_to_budget(s, qcfg, target_bytes=target, meta={"a": 1}, fast_trials=False)
    assert all(t["exact"] for t in exact.trials) and exact.total_bytes <= target
    # the estimate-led search lands within a few hundredths of the exact one's k
    assert abs(res.qcfg.sdclip_k - exact.qcfg.sdclip_k) < 0.05 * exact.qcfg.sdclip_k
