"""One table of everything that switches with run progress, looked up once per step.

modded-nanogpt keeps its schedule in one TRAINING_STAGES list instead of scattered `if step > x`
checks; this is the same idea for loopgolf's knobs. `TriggerTable(cfg, stages)` is built once from
the config; `table.at(progress)` returns a frozen `Triggers` row with every decision for that step:

- the plan stage (model.plan_stages; `recurrence.stage_index`), passed to the model as an argument,
- the training row length (train.seq_len_schedule; `schedule.seq_len_at`), at fixed tokens per step,
- whether QAT is on (quant.qat_start_frac),
- the LR multiplier and Muon momentum (train/schedule.py),
- the expected total steps (budget / mean step time, capped at max_steps) that sets the EMA time
  constant, and whether the averaging window (EMA, or SWA from optim.swa_start_frac) is open,
- the checkpoint slot (train.checkpoint_every: N steps; else, with train.checkpoint_auto, every
  CHECKPOINT_AUTO_FRAC of the run when the budget is longer than CHECKPOINT_AUTO_MIN_S): a
  checkpoint is due when it grows.

The calibration reserve (quant.gptq_reserve_s, GPTQ on training batches) is taken off the budget
here, so the loop stops in time for calibration to finish inside the training budget.
Rows depend only on (step, seconds, mean step time) and the config, so a resumed run recomputes
exactly the rows an uninterrupted one would. `shapes()` lists the (plan stage, row length) pairs the
run can meet, which the trainer compiles before the clock starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from loopgolf.config import RunConfig
from loopgolf.model.recurrence import stage_index
from loopgolf.train.schedule import (Progress, lr_multiplier, momentum_at, parse_seq_len_schedule,
                                     progress_fraction, seq_len_at)

CHECKPOINT_AUTO_MIN_S = 180.0  # budgets longer than this checkpoint by default (train.checkpoint_auto)
CHECKPOINT_AUTO_FRAC = 0.1  # ... every 10 % of the run


@dataclass(frozen=True)
class Triggers:
    frac: float  # run progress in [0, 1]
    stage: int  # index into GPT.stages
    qat: bool
    lr_mult: float
    momentum: float
    expected_steps: float  # total steps the run is expected to take (EMA horizon)
    averaging: bool  # EMA on, or inside the SWA window
    checkpoint_slot: int  # -1 = checkpoints off; a checkpoint is due when this grows
    seq_len: int  # training row length (train.seq_len_schedule; data.seq_len without one)


class TriggerTable:
    def __init__(self, cfg: RunConfig, stages: tuple = ()):
        self.cfg, self.stages = cfg, tuple(stages)
        t, q = cfg.train, cfg.quant
        reserve = q.gptq_reserve_s if (q.gptq and q.gptq_calib == "train") else 0.0
        self.reserve_s = reserve if t.budget_s > 0 else 0.0
        # the loop's own budget: the rest is kept for calibration on training batches
        self.budget_s = max(1.0, t.budget_s - reserve) if (reserve and t.budget_s > 0) else t.budget_s
        self._train = _with_budget(t, self.budget_s)
        self.qat_enabled = q.qat != "off"
        self.checkpoint_every_steps, self.checkpoint_every_frac = checkpoint_policy(cfg)
        self.seq_lens = parse_seq_len_schedule(t.seq_len_schedule, cfg.data.seq_len, t.batch_tokens,
                                               t.micro_batch_seqs * cfg.data.seq_len)

    @property
    def checkpoints(self) -> bool:
        return bool(self.checkpoint_every_steps or self.checkpoint_every_frac)

    def fraction(self, p: Progress) -> float:
        return progress_fraction(p, self._train)

    def at(self, p: Progress) -> Triggers:
        o, q, t = self.cfg.optim, self.cfg.quant, self._train
        frac = self.fraction(p)
        stage = stage_index(self.stages, frac, p.step) if self.stages else -1
        expected = t.budget_s / p.avg_step_s if (t.budget_s > 0 and p.avg_step_s > 0) else t.max_steps
        averaging = o.ema_horizon_frac > 0 or (o.swa_start_frac > 0 and frac >= o.swa_start_frac)
        if self.checkpoint_every_steps:
            ck_slot = p.step // self.checkpoint_every_steps
        elif self.checkpoint_every_frac:
            ck_slot = int(math.floor(frac / self.checkpoint_every_frac + 1e-9))
        else:
            ck_slot = -1
        return Triggers(frac=frac, stage=stage, qat=self.qat_enabled and frac >= q.qat_start_frac,
                        lr_mult=lr_multiplier(p, o, t), momentum=momentum_at(p, o, t),
                        expected_steps=min(expected, t.max_steps), averaging=averaging,
                        checkpoint_slot=ck_slot, seq_len=seq_len_at(self.seq_lens, frac))

    def shapes(self) -> list[tuple[int, int]]:
        """(plan stage index, row length) pairs the run can meet, in order of first use: the pairs
        whose progress intervals overlap when every plan stage ends at a fraction, else every pair
        (a stage that ends at a step count may meet any length)."""
        ends = [st.until_frac for st in self.stages] or [math.inf]
        if any(st.until_step < 2**62 for st in self.stages):
            return list(dict.fromkeys((i, n) for i in range(len(ends)) for n, _ in self.seq_lens))
        plan = [(i, ends[i - 1] if i else 0.0, end) for i, end in enumerate(ends)]
        rows = [(n, self.seq_lens[j - 1][1] if j else 0.0, end) for j, (n, end) in enumerate(self.seq_lens)]
        hits = sorted((max(a, c), i, n) for i, a, b in plan for n, c, d in rows if max(a, c) < min(b, d))
        return list(dict.fromkeys((i, n) for _, i, n in hits))

    def out_of_time(self, seconds: float) -> bool:
        return self.budget_s > 0 and seconds >= self.budget_s


def checkpoint_policy(cfg: RunConfig) -> tuple[int, float]:
    """(every N steps, every fraction of the run): train.checkpoint_every > 0 is a step count; else
    train.checkpoint_auto (the default) checkpoints every 10 % of runs over a few minutes."""
    every = cfg.train.checkpoint_every
    if every > 0:
        return every, 0.0
    if cfg.train.checkpoint_auto and cfg.train.budget_s > CHECKPOINT_AUTO_MIN_S:
        return 0, CHECKPOINT_AUTO_FRAC
    return 0, 0.0


def _with_budget(t, budget_s: float):
    import dataclasses

    return t if budget_s == t.budget_s else dataclasses.replace(t, budget_s=budget_s)
