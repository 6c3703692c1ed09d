import pytest

from loopgolf.config import OptimConfig, TrainConfig
from loopgolf.train.schedule import Clock, Progress, lr_multiplier, momentum_at, progress_fraction


def test_progress_is_the_larger_of_steps_and_time():
    t = TrainConfig(budget_s=100, max_steps=1000)
    assert progress_fraction(Progress(100, 50.0, 0.5), t) == 0.5
    assert progress_fraction(Progress(900, 50.0, 0.5), t) == 0.9


def test_fractional_warmup_and_warmdown():
    t = TrainConfig(budget_s=100, max_steps=10**9)
    o = OptimConfig(warmup_frac=0.1, warmdown_frac=0.5)
    assert lr_multiplier(Progress(0, 5.0, 0.1), o, t) == pytest.approx(0.5)
    assert lr_multiplier(Progress(0, 30.0, 0.1), o, t) == 1.0
    assert lr_multiplier(Progress(0, 75.0, 0.1), o, t) == pytest.approx(0.5)
    assert lr_multiplier(Progress(0, 100.0, 0.1), o, t) == 0.0


def test_baseline_wallclock_warmdown():
    # baseline: warmdown window = 1200 x avg step time; at 0.3 s/step that is 360 s > a 300 s budget,
    # so the whole proxy run is in warm-down and starts at 300/360.
    t = TrainConfig(budget_s=300, max_steps=20000)
    o = OptimConfig(warmdown_iters=1200)
    assert lr_multiplier(Progress(1, 0.3, 0.3), o, t) == pytest.approx(299.7 / 360)
    t600 = TrainConfig(budget_s=600, max_steps=20000)
    assert lr_multiplier(Progress(100, 100.0, 0.3), o, t600) == 1.0


def test_momentum_warmup_in_steps_and_fractions():
    t = TrainConfig(budget_s=100, max_steps=10**6)
    o = OptimConfig(momentum_warmup_steps=500)
    assert momentum_at(Progress(0, 0, 0), o, t) == pytest.approx(0.85)
    assert momentum_at(Progress(250, 0, 0), o, t) == pytest.approx(0.90)
    assert momentum_at(Progress(600, 0, 0), o, t) == pytest.approx(0.95)
    o = OptimConfig(momentum_warmup_frac=0.5)
    assert momentum_at(Progress(0, 25.0, 0), o, t) == pytest.approx(0.90)


def test_clock_pauses():
    c = Clock(already_s=5.0)
    assert c.seconds == 5.0
    c.start()
    c.pause()
    assert c.seconds >= 5.0


def test_seq_len_schedule_parses_ours_and_pr2014s_form():
    from loopgolf.train.schedule import parse_seq_len_schedule, seq_len_at
    inf = float("inf")
    ours = parse_seq_len_schedule("1024@0.1,2048@0.7", 3072, 786_432, 16 * 3072)
    assert ours == ((1024, 0.1), (2048, 0.7), (3072, inf))
    assert parse_seq_len_schedule("1024@0.100,2048@0.700,3072@1.000", 3072, 786_432, 16 * 3072) == ours
    assert parse_seq_len_schedule("", 2048, 786_432, 48 * 2048) == ((2048, inf),)
    assert [seq_len_at(ours, f) for f in (0.0, 0.0999, 0.1, 0.6999, 0.7, 1.0)] == [1024, 1024, 2048, 2048, 3072, 3072]


@pytest.mark.parametrize("spec,fragment", [
    ("1024", "not LENGTH@FRACTION"), ("1024@0.7,2048@0.1", "fractions must increase"),
    ("1024@1.5", "fractions must increase"), ("1024@0.1,2048@1.0", "closing entry at 1.0"),
    ("1000@0.1", "length 1000 must be >= 2 and divide train.batch_tokens=786432"),
])
def test_seq_len_schedule_errors_name_the_field(spec, fragment):
    from loopgolf.config import ConfigError
    from loopgolf.train.schedule import parse_seq_len_schedule
    with pytest.raises(ConfigError, match=f"train.seq_len_schedule=.*{fragment}"):
        parse_seq_len_schedule(spec, 3072, 786_432, 16 * 3072)


def _pr29_get_lr(step, lr=3e-3, lr_min=3e-4, warmup=100, total=285):
    """PR #29 L304-315, transcribed."""
    import math
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - lr_min)


def test_step_keyed_cosine_is_pr29s_get_lr():
    from loopgolf.presets import get_preset
    cfg = get_preset("seed-universal-mqa")
    o, t = cfg.optim, cfg.train
    for step in (0, 1, 50, 99, 100, 101, 192, 284, 285, 286, 400, 470, 1000):
        got = o.adamw_lr * lr_multiplier(Progress(step, step * 0.3, 0.3), o, t)
        assert got == pytest.approx(_pr29_get_lr(step), rel=1e-12), step
    assert o.adamw_lr * lr_multiplier(Progress(0, 0.0, 0.0), o, t) == pytest.approx(3e-5)
    assert o.adamw_lr * lr_multiplier(Progress(285, 100.0, 0.3), o, t) == pytest.approx(3e-4)  # the floor
    assert lr_multiplier(Progress(470, 200.0, 0.3), o, t) == pytest.approx(1.0)  # past 285 it rises again


def test_cosine_over_the_run_when_no_step_horizon():
    t = TrainConfig(budget_s=100, max_steps=10**9)
    o = OptimConfig(lr_schedule="cosine", warmup_frac=0.2, min_lr_frac=0.1)
    assert lr_multiplier(Progress(3, 10.0, 0.1), o, t) == pytest.approx(0.5)  # linear warm-up
    assert lr_multiplier(Progress(9, 20.0, 0.1), o, t) == pytest.approx(1.0)
    assert lr_multiplier(Progress(9, 60.0, 0.1), o, t) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert lr_multiplier(Progress(9, 100.0, 0.1), o, t) == pytest.approx(0.1)
