import dataclasses

import pytest
import torch

from loopgolf.compress.artifact import pack, unpack
from loopgolf.compress.lqer import fold_lqer
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
