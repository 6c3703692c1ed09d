"""Selective +-1 pruning: which values are zeroed (global order by |w|/scale), what is left alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loopgolf.compress.prune import prune_ones


def row_tensor(scheme: str, w: list[list[float]], q: list[list[int]], scale: list[float]):
    return (torch.tensor(w), (scheme, {"q": np.array(q, dtype=np.int8),
                                       "scale": np.array(scale, dtype=np.float16)}))


def setup():
    # keys |w|/scale of the +-1 values: a: 0.6, 0.55 (row 1, scale 2), b: 0.52, 0.7, 0.9
    wa, qa = row_tensor("int8_row", [[0.6, 3.0], [-1.1, 0.1]], [[1, 3], [-1, 0]], [1.0, 2.0])
    wb, qb = row_tensor("int4_row", [[0.7, -0.52, 0.9, 2.1]], [[1, -1, 1, 2]], [1.0])
    wc = torch.tensor([[0.5, 0.6]])
    qc = ("fp16", {"data": wc.numpy().astype(np.float16)})
    state = {"a": wa, "b": wb, "c": wc}
    quantized = {"a": qa, "b": qb, "c": qc}
    return quantized, state


def codes(out, name):
    return out[name][1]["q"].tolist()


@pytest.mark.parametrize("frac,a,b", [
    (0.2, [[1, 3], [-1, 0]], [[1, 0, 1, 2]]),        # 1 of 5: b's 0.52
    (0.4, [[1, 3], [0, 0]], [[1, 0, 1, 2]]),         # + a's 0.55 (1.1 / scale 2, not 1.1)
    (0.6, [[0, 3], [0, 0]], [[1, 0, 1, 2]]),         # + a's 0.6
    (0.8, [[0, 3], [0, 0]], [[0, 0, 1, 2]]),         # + b's 0.7
    (1.0, [[0, 3], [0, 0]], [[0, 0, 0, 2]]),         # every +-1; the 2 and 3 stay
])
def test_prunes_smallest_ratio_first_globally(frac, a, b) -> None:
    quantized, state = setup()
    out = prune_ones(quantized, state, frac)
    assert codes(out, "a") == a and codes(out, "b") == b
    assert out["a"][0] == "int8_row" and out["b"][0] == "int4_row"
    assert out["c"] is quantized["c"]  # not a row grid: untouched
    np.testing.assert_array_equal(out["a"][1]["scale"], quantized["a"][1]["scale"])


def test_input_is_not_mutated_and_zero_fraction_is_identity() -> None:
    quantized, state = setup()
    before = {n: quantized[n][1]["q"].copy() for n in ("a", "b")}
    out = prune_ones(quantized, state, 1.0)
    for n in ("a", "b"):
        np.testing.assert_array_equal(quantized[n][1]["q"], before[n])
        assert out[n][1]["q"] is not quantized[n][1]["q"]
    same = prune_ones(quantized, state, 0.0)
    assert same is not quantized and all(same[n] is quantized[n] for n in quantized)


def test_ties_break_by_tensor_name_then_flat_index() -> None:
    wz, qz = row_tensor("int8_row", [[0.6, 0.6]], [[1, 1]], [1.0])
    wy, qy = row_tensor("int8_row", [[0.6, 0.6]], [[-1, 1]], [1.0])
    quantized, state = {"z": qz, "y": qy}, {"z": -wz, "y": wy}
    out = prune_ones(quantized, state, 0.25)  # 1 of 4 equal keys: y (sorted first), index 0
    assert codes(out, "y") == [[0, 1]] and codes(out, "z") == [[1, 1]]
    out = prune_ones(quantized, state, 0.75)
    assert codes(out, "y") == [[0, 0]] and codes(out, "z") == [[0, 1]]


def test_ternary_is_a_row_grid_too() -> None:
    w, q = row_tensor("ternary_row", [[0.51, -0.9, 0.0]], [[1, -1, 0]], [1.0])
    out = prune_ones({"t": q}, {"t": w}, 0.5)
    assert codes(out, "t") == [[0, -1, 0]]


@pytest.mark.parametrize("frac", [-0.1, 1.5])
def test_fraction_out_of_range_is_refused(frac) -> None:
    quantized, state = setup()
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        prune_ones(quantized, state, frac)
