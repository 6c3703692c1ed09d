"""Training clock and schedules as functions of run progress.

progress = max(step / max_steps, train_seconds / budget_s), so the same preset behaves sensibly
from a CPU minute to 8 GPUs x 10 minutes: warm-up, warm-down and momentum ramps are fractions of
the run. The baseline's step-denominated knobs (warm-down of 1,200 iterations measured in wall
clock, momentum warm-up over 500 steps) are available for faithful reproduction of the challenge
baseline (techniques.md 2.2), and PR #29's step-keyed cosine (optim.lr_schedule=cosine,
optim.lr_warmup_steps, optim.lr_cosine_steps) for PR #29's. The training row length may also grow with progress
(train.seq_len_schedule, PR #2014: 1024 -> 2048 -> 3072) at a fixed number of tokens per step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from loopgolf.config import ConfigError, OptimConfig, TrainConfig


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
    if o.lr_schedule == "cosine":
        return cosine_multiplier(p, o, t)
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


def cosine_multiplier(p: Progress, o: OptimConfig, t: TrainConfig) -> float:
    """optim.lr_schedule=cosine (PR #29 get_lr, L304-315) as a multiplier of the base LR, with floor
    m = optim.min_lr_frac (PR #29: 3e-4 / 3e-3 = 0.1). Warm-up: (step + 1) / W while step < W =
    optim.lr_warmup_steps (PR #29: 100), or, with W = 0, f / w while the run progress f is below
    w = optim.warmup_frac. Then

        m + (1 - m) (1 + cos(pi u)) / 2

    step-keyed as published when C = optim.lr_cosine_steps > 0: u = (step - W) / max(1, C - W)
    (PR #29: C = 285, its 570 s at an assumed 2 s per step, L420), and as in the PR u is not
    clamped: past step C the LR rises again (period 2 (C - W) steps). C = 0 ends the cosine with
    the run instead: u = (f - w) / (1 - w)."""
    mn, W, w = o.min_lr_frac, o.lr_warmup_steps, o.warmup_frac
    if p.step < W:
        return (p.step + 1) / W
    if o.lr_cosine_steps > 0:
        u = (p.step - W) / max(1, o.lr_cosine_steps - W)
    else:
        f = progress_fraction(p, t)
        if W == 0 and f < w:
            return f / w
        u = (f - w) / (1.0 - w) if w < 1.0 else 1.0
    return mn + (1.0 - mn) * 0.5 * (1.0 + math.cos(math.pi * u))


def momentum_at(p: Progress, o: OptimConfig, t: TrainConfig) -> float:
    if o.momentum_warmup_steps > 0:
        frac = min(1.0, p.step / o.momentum_warmup_steps)
    elif o.momentum_warmup_frac > 0:
        frac = min(1.0, progress_fraction(p, t) / o.momentum_warmup_frac)
    else:
        return o.momentum
    return (1 - frac) * o.momentum_warmup_start + frac * o.momentum


def parse_seq_len_schedule(spec: str, final: int, batch_tokens: int, micro_tokens: int
                           ) -> tuple[tuple[int, float], ...]:
    """train.seq_len_schedule "L1@f1,L2@f2,..." and data.seq_len -> ((L1, f1), (L2, f2), ...,
    (final, inf)): rows of L1 tokens while run progress < f1, then L2 while < f2, ..., then
    data.seq_len; "" -> ((final, inf),). PR #2014's TRAIN_SEQ_SCHEDULE ("1024@0.100,2048@0.700,
    3072@1.000": its last entry, at 1.0, must be data.seq_len) reads the same (#2014 switches at
    progress > f, this at >= f). Every length must divide train.batch_tokens (the tokens of a step
    never change) and the tokens of a micro-batch, train.micro_batch_seqs x data.seq_len (so a
    micro-batch holds the same tokens, and memory, at every length); ConfigError otherwise."""
    where = f"train.seq_len_schedule={spec!r}"
    out: list[tuple[int, float]] = []
    for item in filter(None, (t.strip() for t in spec.split(","))):
        length, _, frac = item.partition("@")
        try:
            out.append((int(length), float(frac)))
        except ValueError:
            raise ConfigError(f"{where}: {item!r} is not LENGTH@FRACTION, e.g. 1024@0.1") from None
    if out and out[-1][1] == 1.0 and out[-1][0] == final:
        out.pop()  # #2014's closing "3072@1.000": the final length, which data.seq_len gives anyway
    fracs = [f for _, f in out]
    if fracs != sorted(set(fracs)) or not all(0.0 < f < 1.0 for f in fracs):
        raise ConfigError(f"{where}: fractions must increase within (0, 1); the last length is data.seq_len="
                          f"{final} (a closing entry at 1.0 must name it)")
    out.append((final, float("inf")))
    for length, _ in out:
        if length < 2 or batch_tokens % length or micro_tokens % length:
            raise ConfigError(f"{where}: length {length} must be >= 2 and divide train.batch_tokens="
                              f"{batch_tokens} and the micro-batch tokens (train.micro_batch_seqs x "
                              f"data.seq_len = {micro_tokens})")
    return tuple(out)


def seq_len_at(stages: tuple[tuple[int, float], ...], frac: float) -> int:
    """The row length of the first stage whose end fraction is above `frac`."""
    return next(length for length, until in stages if frac < until)
