"""A loss stuck at ln(vocab) or a non-finite score stops the run with one clear error."""
import math

import pytest

from loopgolf.train.guards import STALL_MIN_STEPS, DegenerateModelError, StallGuard, check_finite_eval


def test_stall_at_uniform_loss_stops_after_its_share_of_the_run():
    guard = StallGuard(vocab_size=512, stall_frac=0.25)
    flat = math.log(512)
    guard.check(5.0, 1, 0.01)  # a moving loss never trips it
    for step in range(2, 2 + STALL_MIN_STEPS + 30):
        frac = step / 100
        if frac - 0.02 >= 0.25:
            with pytest.raises(DegenerateModelError, match=r"step 27: the training loss has stayed at 6.2446 ~ ln\(vocab\) = 6.2383 .*"
                               r"since step 2.*lower optim.matrix_lr"):
                guard.check(flat * 1.001, step, frac)
            return
        guard.check(flat * 1.001, step, frac)
    raise AssertionError("the guard never fired")


def test_stall_guard_resets_when_the_loss_moves_and_is_off_at_zero():
    guard = StallGuard(vocab_size=512, stall_frac=0.1)
    flat = math.log(512)
    for step in range(1, 200):
        guard.check(flat if step % 20 else 3.0, step, step / 200)  # leaves ln(V) every 20 steps
    off = StallGuard(vocab_size=512, stall_frac=0.0)
    for step in range(1, 200):
        off.check(flat, step, step / 200)
    assert off.since is None


def test_non_finite_scores_are_errors():
    assert check_finite_eval({"val_loss": 1.0, "val_bpb": 2.0}, "x")["val_bpb"] == 2.0
    with pytest.raises(DegenerateModelError, match="run/model.lgz: evaluation: val_bpb is nan"):
        check_finite_eval({"val_loss": 1.0, "val_bpb": float("nan")}, "run/model.lgz: evaluation")
