"""A refactor keeps behaviour: every preset's stage losses and two optimizer steps on CPU equal the
stored values (tests/golden/make_golden.py says how they are made and when to rewrite them)."""
import json

import pytest

from golden.make_golden import GOLDEN, preset_losses
from loopgolf.presets import PRESETS

STORED = json.loads(GOLDEN.read_text())
# Floating-point reassociation in a rewritten forward moves a loss by ~1e-6 relative at most.
REL = 1e-5


def test_every_preset_has_golden_losses():
    assert set(STORED) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(STORED))
def test_losses_match_the_stored_values(name):
    got, want = preset_losses(name), STORED[name]
    assert len(got["stage_losses"]) == len(want["stage_losses"])
    assert got["stage_losses"] == pytest.approx(want["stage_losses"], rel=REL)
    assert got["step_losses"] == pytest.approx(want["step_losses"], rel=REL)
