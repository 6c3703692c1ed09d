"""EMA and SWA with horizons as run fractions: known averages, the table's `averaged` column decides
which parameters are averaged, and a state round trip continues exactly."""
import dataclasses

import pytest
import torch

from loopgolf.model import params as param_table
from loopgolf.train.averaging import WeightAverage


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_gain = torch.nn.Parameter(torch.zeros(2))  # a control tensor
        self.loop_embed = torch.nn.Parameter(torch.zeros(2))


def _run(avg: WeightAverage, model: Two, values, fracs, expected=10.0):
    for v, f in zip(values, fracs):
        with torch.no_grad():
            model.q_gain.fill_(v)
            model.loop_embed.fill_(v)
        avg.update(f, expected)


def test_ema_decay_follows_the_expected_run_length():
    m = Two()
    avg = WeightAverage(m, ema_horizon_frac=0.2)  # tau = 0.2 x 10 steps = 2 -> decay 0.5
    _run(avg, m, [4.0, 0.0, 2.0], [0.1, 0.2, 0.3])
    assert avg.swap_in() == 3
    assert m.q_gain.tolist() == pytest.approx([2.0, 2.0])  # 4 -> 2 -> 2: ((4*.5)+0*.5)*.5 + 2*.5


def test_swa_averages_snapshots_from_its_start_at_its_spacing():
    m = Two()
    avg = WeightAverage(m, swa_start_frac=0.5, swa_every_frac=0.2)
    _run(avg, m, [9.0, 1.0, 5.0, 3.0, 7.0], [0.3, 0.5, 0.6, 0.7, 0.95])  # snapshots at 0.5, 0.7 (next 0.9), 0.95
    assert avg.swap_in() == 3
    assert m.q_gain.tolist() == pytest.approx([(1.0 + 3.0 + 7.0) / 3] * 2)


def test_nothing_to_swap_before_any_snapshot():
    m = Two()
    avg = WeightAverage(m, swa_start_frac=0.9)
    _run(avg, m, [3.0], [0.1])
    assert avg.swap_in() == 0 and m.q_gain.tolist() == [3.0, 3.0]


def test_the_parameter_table_decides_what_is_averaged(monkeypatch):
    real = param_table.kinds_of

    def kinds_without_loop_embed(named, *a, **kw):
        out = real(named, *a, **kw)
        return {n: (dataclasses.replace(k, averaged=False) if n == "loop_embed" else k) for n, k in out.items()}
    monkeypatch.setattr("loopgolf.train.averaging.kinds_of", kinds_without_loop_embed)
    m = Two()
    avg = WeightAverage(m, ema_horizon_frac=0.2)
    assert avg.names == ["q_gain"]
    _run(avg, m, [4.0, 0.0], [0.1, 0.2])
    avg.swap_in()
    assert m.q_gain.tolist() == pytest.approx([2.0, 2.0]) and m.loop_embed.tolist() == [0.0, 0.0]


def test_state_round_trip_continues_exactly():
    a, b = Two(), Two()
    full = WeightAverage(a, ema_horizon_frac=0.3)
    _run(full, a, [1.0, 5.0, 2.0, 8.0], [0.1, 0.2, 0.3, 0.4])
    half = WeightAverage(b, ema_horizon_frac=0.3)
    _run(half, b, [1.0, 5.0], [0.1, 0.2])
    resumed = WeightAverage(b, ema_horizon_frac=0.3)
    resumed.load_state_dict(half.state_dict())
    _run(resumed, b, [2.0, 8.0], [0.3, 0.4])
    full.swap_in()
    resumed.swap_in()
    assert torch.equal(a.q_gain, b.q_gain) and resumed.count == 4


def test_qat_applied_after_construction_keeps_plain_names():
    """seed-recursive-4b (QAT from step 0 + SWA) failed its first step on one H200 with
    KeyError 'blocks.0.attn.c_q.weight': the QAT parametrization renamed the weights the average
    had listed. The average follows the raw weight under its plain name."""
    from torch.nn.utils import parametrize

    class Quarter(torch.nn.Module):
        def forward(self, w):
            return w * 0.25

    block = torch.nn.Module()
    block.mlp = torch.nn.Module()
    block.mlp.fc = fc = torch.nn.Linear(2, 2, bias=False)
    m = torch.nn.Module()
    m.blocks = torch.nn.ModuleList([block])
    avg = WeightAverage(m, swa_start_frac=0.1, swa_every_frac=0.1)
    assert avg.names == ["blocks.0.mlp.fc.weight"]
    parametrize.register_parametrization(fc, "weight", Quarter())
    for v, f in zip([2.0, 4.0], [0.1, 0.2]):
        with torch.no_grad():
            fc.parametrizations.weight.original.fill_(v)
        avg.update(f, 10.0)
    assert avg.swap_in() == 2 and sorted(avg.state_dict()["avg"]) == ["blocks.0.mlp.fc.weight"]
    assert fc.parametrizations.weight.original.tolist() == [[3.0, 3.0], [3.0, 3.0]]  # the raw mean
