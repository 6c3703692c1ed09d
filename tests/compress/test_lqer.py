import dataclasses

import pytest
import torch

from loopgolf.compress.artifact import pack, unpack
from loopgolf.compress.lqer import LQER_GROUPS, factor_schemes, fold_lqer, low_rank
from loopgolf.compress.quant import QUANTIZERS
from loopgolf.config import QuantConfig

Q = QuantConfig(scheme="int4_row", row_scale_min=0.0, passthrough_max_numel=0, codec="zlib")


def _state():
    torch.manual_seed(0)
    return {"blocks.0.mlp.fc.weight": torch.randn(96, 64), "blocks.0.attn.c_q.weight": torch.randn(64, 64),
            "q_gain": torch.ones(4)}


def _err(state, back):
    return sum((state[n] - back[n]).pow(2).sum().item() for n in state)


def test_lqer_round_trip_has_plain_names_and_smaller_error():
    state = _state()
    plain, _ = unpack(pack(state, {}, Q))
    with_lqer, _ = unpack(pack(state, {}, dataclasses.replace(Q, lqer_rank=8)))
    assert set(with_lqer) == set(state) == set(plain)  # factors are folded away on load
    assert _err(state, with_lqer) < 0.8 * _err(state, plain)
    # rank = full rank (64 for the square matrix) leaves only the fp16 rounding of the factors
    full, _ = unpack(pack(state, {}, dataclasses.replace(Q, lqer_rank=63)))
    assert _err(state, full) < 0.05 * _err(state, plain)


def test_lqer_bytes_are_deterministic_and_cost_the_factors():
    state = _state()
    a = pack(state, {}, dataclasses.replace(Q, lqer_rank=4))
    assert a == pack(state, {}, dataclasses.replace(Q, lqer_rank=4))
    assert len(a) > len(pack(state, {}, Q))


def test_fold_refuses_mismatched_or_lonely_factors():
    w = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="do not match"):
        fold_lqer({"w": w, "w.lqer_a": torch.zeros(4, 2), "w.lqer_b": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="without its pair"):
        fold_lqer({"w": w, "w.lqer_b": torch.zeros(2, 3)})
    out = fold_lqer({"w": w, "w.lqer_a": torch.ones(4, 1), "w.lqer_b": torch.ones(1, 3)})
    assert set(out) == {"w"} and torch.equal(out["w"], torch.ones(4, 3))


def test_lqer_rank_is_validated():
    from loopgolf.config import ConfigError
    with pytest.raises(ConfigError, match="lqer_rank"):
        dataclasses.replace(Q, lqer_rank=-1).validate()


def test_asymmetric_factor_codes_have_the_known_values():
    """#1855's _lqer_pack_asym: A -> int2 in [-2, 1] at max|A|/1.5, B -> int4 in [-8, 7] at max|B_g|/7.5."""
    a = torch.tensor([[1.5, -1.5], [0.5, 0.2]])  # scale 1: round(1.5) = 2 clamps to 1, round(0.5) = 0
    parts = QUANTIZERS["lqer_int2_tensor"].quantize(a, Q)
    assert parts["q"].tolist() == [[1, -2], [0, 0]] and float(parts["scale"]) == 1.0
    assert QUANTIZERS["lqer_int2_tensor"].dequantize(parts, (2, 2)).tolist() == [[1.0, -2.0], [0.0, 0.0]]
    b = torch.zeros(2, 32)
    b[0, :4] = torch.tensor([7.5, -7.5, 1.0, 0.25])  # group 0 (entries 0..31): scale 1
    b[1, :3] = torch.tensor([3.75, -0.2, 1.3])  # group 1: scale 0.5; 7.5 -> 8 clamps to 7, -0.4 -> 0
    parts = QUANTIZERS["lqer_int4_g32"].quantize(b, Q)
    assert parts["scale"].tolist() == [1.0, 0.5]
    assert parts["q"][0, :4].tolist() == [7, -8, 1, 0] and parts["q"][1, :3].tolist() == [7, 0, 3]
    back = QUANTIZERS["lqer_int4_g32"].dequantize(parts, (2, 32))
    assert back[0, :4].tolist() == [7.0, -8.0, 1.0, 0.0]


def test_asymmetric_int4_reconstruction_error_is_within_its_bound():
    """Rank-4 LQER, int2 A, int4 B in groups of 32, the 1 worst matrix: the reloaded matrix W' obeys
        |W - W'|_F <= |E - A B|_F + |A - A'|_F |B|_F + |A'|_F |B - B'|_F
    with |A - A'| <= s_A / 2 and |B - B'| <= s_g / 2 entrywise (codes are rounded, the max clamps
    by half a step), and the other matrix is left on its grid."""
    state = _state()
    qcfg = dataclasses.replace(Q, lqer_rank=4, lqer_asym_group=32, lqer_top_k=1)
    qcfg.validate()
    plain, _ = unpack(pack(state, {}, Q))
    back, _ = unpack(pack(state, {}, qcfg))
    worst = max(("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight"),
                key=lambda n: float((state[n] - plain[n]).norm()))
    other = ({"blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight"} - {worst}).pop()
    assert torch.equal(back[other], plain[other])
    err = state[worst] - plain[worst]
    a, b = low_rank(err, 4)
    sa = float(a.abs().max()) / 1.5
    sb = (b.reshape(-1, 32).abs().amax(1) / 7.5).repeat_interleave(32)
    da, db = 0.5 * sa * (a.numel() ** 0.5), 0.5 * float(sb.norm())
    a_hat_norm = float(a.norm()) + da
    bound = float((err - a @ b).norm()) + da * float(b.norm()) + a_hat_norm * db
    got = float((state[worst] - back[worst]).norm())
    assert got <= bound * (1 + 2e-3) + 1e-5  # fp16 scales: a relative 2^-11 each
    assert got < float(err.norm())  # the correction helps this matrix


def test_asymmetric_factors_cost_less_than_fp16_and_fall_back_when_not_divisible():
    state = _state()
    fp16 = pack(state, {}, dataclasses.replace(Q, lqer_rank=4))
    asym = pack(state, {}, dataclasses.replace(Q, lqer_rank=4, lqer_asym_group=32))
    assert len(asym) < len(fp16)
    assert factor_schemes(4 * 64, 32) == ("lqer_int2_tensor", "lqer_int4_g32")
    assert factor_schemes(4 * 63, 32) == ("fp16", "fp16") and factor_schemes(256, 0) == ("fp16", "fp16")
    odd = {"blocks.0.mlp.fc.weight": torch.randn(40, 36)}  # B is 4 x 36: not a multiple of 32
    out, _ = unpack(pack(odd, {}, dataclasses.replace(Q, lqer_rank=4, lqer_asym_group=32)))
    assert set(out) == set(odd)


def test_lqer_groups_match_the_config_choices():
    from loopgolf.config import ConfigError
    for g in LQER_GROUPS:
        dataclasses.replace(Q, lqer_asym_group=g).validate()
    with pytest.raises(ConfigError, match="lqer_asym_group"):
        dataclasses.replace(Q, lqer_asym_group=48).validate()
    with pytest.raises(ConfigError, match="lqer_top_k"):
        dataclasses.replace(Q, lqer_top_k=-1).validate()
