"""The trigger table: one row per step decides stage, QAT, LR/momentum, averaging and checkpoints."""
from loopgolf.model.recurrence import parse_stages
from loopgolf.presets import get_preset
from loopgolf.train.schedule import Progress, lr_multiplier, momentum_at
from loopgolf.train.triggers import CHECKPOINT_AUTO_FRAC, TriggerTable, checkpoint_policy


def _cfg(*sets):
    return get_preset("tiny").override(list(sets)).validate()


def test_checkpoint_policy_defaults_on_only_for_long_budgets():
    assert checkpoint_policy(_cfg("train.budget_s=600")) == (0, CHECKPOINT_AUTO_FRAC)
    assert checkpoint_policy(_cfg("train.budget_s=60")) == (0, 0.0)  # a minute: not worth it
    assert checkpoint_policy(_cfg("train.budget_s=0")) == (0, 0.0)
    assert checkpoint_policy(_cfg("train.checkpoint_every=5")) == (5, 0.0)
    assert checkpoint_policy(_cfg("train.budget_s=600", "train.checkpoint_auto=false")) == (0, 0.0)


def test_checkpoint_slots_grow_every_tenth_of_the_run_or_every_n_steps():
    table = TriggerTable(_cfg("train.budget_s=600", "train.max_steps=100"))
    slots = [table.at(Progress(s, 0.0, 0.0)).checkpoint_slot for s in range(0, 101, 5)]
    assert slots == [s // 10 for s in range(0, 101, 5)]
    table = TriggerTable(_cfg("train.checkpoint_every=4"))
    assert [table.at(Progress(s, 0.0, 0.0)).checkpoint_slot for s in range(9)] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert TriggerTable(_cfg("train.checkpoint_auto=false")).at(Progress(3, 0, 0)).checkpoint_slot == -1


def test_stage_qat_and_schedules_come_from_one_row():
    cfg = _cfg("model.plan_stages=1+1x1+1@0.5", "quant.qat=ste", "quant.qat_start_frac=0.25",
               "train.max_steps=100", "optim.warmup_frac=0.1", "optim.momentum_warmup_frac=0.2")
    stages = parse_stages(cfg.model.plan_stages, cfg.model.plan)
    table = TriggerTable(cfg, stages)
    rows = {s: table.at(Progress(s, 0.0, 0.0)) for s in (0, 5, 24, 25, 49, 50, 99)}
    assert [rows[s].stage for s in (0, 49, 50, 99)] == [0, 0, 1, 1]
    assert [rows[s].qat for s in (0, 24, 25, 99)] == [False, False, True, True]
    for s, row in rows.items():
        p = Progress(s, 0.0, 0.0)
        assert row.lr_mult == lr_multiplier(p, cfg.optim, cfg.train)
        assert row.momentum == momentum_at(p, cfg.optim, cfg.train)
    assert rows[5].lr_mult == 0.5  # half-way through the 10 % warm-up


def test_calibration_reserve_comes_off_the_loop_budget():
    cfg = _cfg("train.budget_s=100", "quant.gptq=true", "quant.gptq_reserve_s=20", "train.max_steps=10000000")
    table = TriggerTable(cfg)
    assert table.budget_s == 80.0 and table.reserve_s == 20.0
    assert table.fraction(Progress(1, 40.0, 0.1)) == 0.5  # 40 s of an 80 s loop budget
    assert not table.out_of_time(79.9) and table.out_of_time(80.0)
    assert TriggerTable(_cfg("train.budget_s=100", "quant.gptq=true", "quant.gptq_calib=self")).budget_s == 100


def test_averaging_window_and_expected_steps():
    ema = TriggerTable(_cfg("optim.ema_horizon_frac=0.2", "train.budget_s=100", "train.max_steps=5000"))
    assert ema.at(Progress(10, 1.0, 0.1)).expected_steps == 1000  # 100 s / 0.1 s per step
    assert ema.at(Progress(10, 1.0, 0.01)).expected_steps == 5000  # capped at max_steps
    swa = TriggerTable(_cfg("optim.swa_start_frac=0.5", "train.max_steps=10"))
    assert [swa.at(Progress(s, 0.0, 0.0)).averaging for s in (4, 5)] == [False, True]


def test_row_length_follows_the_schedule_and_shapes_list_what_the_run_meets():
    cfg = _cfg("data.seq_len=64", "train.batch_tokens=1024", "train.max_steps=100",
               "train.seq_len_schedule=16@0.1,32@0.7", "model.plan_stages=1+1x1+1@0.35")
    table = TriggerTable(cfg, parse_stages(cfg.model.plan_stages, cfg.model.plan))
    assert [table.at(Progress(s, 0.0, 0.0)).seq_len for s in (0, 9, 10, 69, 70, 99)] == [16, 16, 32, 32, 64, 64]
    # PR #2014's log: "compile_shape_warmup:start 1024xplain,2048xplain,2048xloop,3072xloop"
    assert table.shapes() == [(0, 16), (0, 32), (1, 32), (1, 64)]
    assert TriggerTable(_cfg()).shapes() == [(0, 32)]  # no schedule, no stages: the one shape
    by_step = _cfg("data.seq_len=64", "train.batch_tokens=1024", "train.seq_len_schedule=32@0.5",
                   "model.plan_stages=1+1x1+1@s3")
    table = TriggerTable(by_step, parse_stages(by_step.model.plan_stages, by_step.model.plan))
    assert table.shapes() == [(0, 32), (0, 64), (1, 32), (1, 64)]  # a step-count stage meets any length
