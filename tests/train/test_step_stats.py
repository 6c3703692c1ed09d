"""LaggedStats: values come back in order, one step late, and the queue refuses to overfill."""
import math

import pytest
import torch

from loopgolf.train.step_stats import LaggedStats, StepRecord


def test_take_returns_the_oldest_step_with_its_values():
    q = LaggedStats(torch.device("cpu"))
    assert q.take() is None
    q.put(StepRecord(1, "9", 0.1, 1.0), torch.tensor(2.5), False, 0.25)
    q.put(StepRecord(2, "9", 0.2, 0.9), torch.tensor(float("nan")), True, 0.5)
    first = q.take()
    assert (first.step, first.loss, first.stop, first.clock) == (1, 2.5, False, 0.25)
    q.put(StepRecord(3, "9", 0.3, 0.8), torch.tensor(1.0), False, 0.75)  # the freed buffer is reused
    second, third = q.take(), q.take()
    assert second.step == 2 and math.isnan(second.loss) and second.stop and second.clock == 0.5
    assert (third.step, third.loss, third.clock) == (3, 1.0, 0.75)
    assert len(q) == 0 and q.take() is None


def test_put_beyond_depth_is_refused():
    q = LaggedStats(torch.device("cpu"), depth=1)
    q.put(StepRecord(1, "-", 0.0, 1.0), torch.tensor(1.0), False, 0.0)
    with pytest.raises(RuntimeError, match="take"):
        q.put(StepRecord(2, "-", 0.0, 1.0), torch.tensor(1.0), False, 0.0)
