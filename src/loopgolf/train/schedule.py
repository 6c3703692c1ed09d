"""Training clock and schedules as functions of run progress.

progress = max(step / max_steps, train_seconds / budget_s), so the same preset behaves sensibly
from a CPU minute to 8 GPUs x 10 minutes: warm-up, warm-down and momentum ramps are fractions of
the run. The baseline's step-denominated knobs (warm-down of 1,200 iterations measured in wall
clock, momentum warm-up over 500 steps) are available for faithful reproduction of the challenge
baseline (techniques.md 2.2).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from loopgolf.config import OptimConfig, TrainConfig


class Clock:
    """Wall clock of training only: paused during validation and checkpointing."""

    def __init__(self, already_s: float = 0.0):
        self._acc = already_s
        self._start: float | None = None

    def start(self) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def pause(self) -> None:
        if self._start is not None:
            self._acc += time.perf_counter() - self._start
            self._start = None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return self._acc + running


@dataclass
class Progress:
    step: int  # optimizer steps completed
    seconds: float  # training wall clock used
    avg_step_s: float  # mean seconds per step so far (0 before the first step)


def progress_fraction(p: Progress, t: TrainConfig) -> float:
    frac = p.step / t.max_steps
    if t.budget_s > 0:
        frac = max(frac, p.seconds / t.budget_s)
    return min(1.0, frac)


def lr_multiplier(p: Progress, o: OptimConfig, t: TrainConfig) -> float:
    f = progress_fraction(p, t)
    m = 1.0
    if o.warmup_frac > 0 and f < o.warmup_frac:
        m = f / o.warmup_frac
    if o.warmdown_frac > 0:
        m = min(m, max(0.0, 1.0 - f) / o.warmdown_frac)
    if o.warmdown_iters > 0:
        if t.budget_s > 0:
            # baseline L924-933: warm-down window = warmdown_iters x average step time, in wall clock
            window = o.warmdown_iters * p.avg_step_s
            remaining = max(0.0, t.budget_s - p.seconds)
            if window > 0 and remaining <= window:
                m = min(m, remaining / window)
        else:
            remaining_steps = max(0, t.max_steps - p.step)
            m = min(m, remaining_steps / o.warmdown_iters) if remaining_steps < o.warmdown_iters else m
    if o.min_lr_frac > 0 and f >= o.warmup_frac:
        m = max(m, o.min_lr_frac)  # the floor applies to warm-down, never to warm-up
    return m


def momentum_at(p: Progress, o: OptimConfig, t: TrainConfig) -> float:
    if o.momentum_warmup_steps > 0:
        frac = min(1.0, p.step / o.momentum_warmup_steps)
    elif o.momentum_warmup_frac > 0:
        frac = min(1.0, progress_fraction(p, t) / o.momentum_warmup_frac)
    else:
        return o.momentum
    return (1 - frac) * o.momentum_warmup_start + frac * o.momentum
