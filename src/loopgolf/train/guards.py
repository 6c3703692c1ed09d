"""Stops for a run that cannot produce a useful model: a non-finite loss, a loss stuck at ln(vocab),
or a non-finite evaluation. Each raises one error whose message says what happened and the fix.

A model whose loss never leaves ln(vocab) predicts the uniform distribution: `optim.matrix_lr=1e9`
kept the demo at 6.9315 nats (= ln 1024) for the whole run, finite, so only a NaN check let it ship
an artifact scoring NaN (issue 17). `StallGuard` stops such a run once the loss has stayed within
STALL_TOL of ln(vocab) for train.stall_frac of the run (and at least STALL_MIN_STEPS steps).
"""
from __future__ import annotations

import math

STALL_TOL = 0.01  # relative distance from ln(vocab) that counts as "has not moved"
STALL_MIN_STEPS = 10  # a stall shorter than this many steps never stops a run


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class DegenerateModelError(RuntimeError):
    """The model learned nothing (loss stuck at ln(vocab)) or scores a non-finite value."""


class StallGuard:
    def __init__(self, vocab_size: int, stall_frac: float):
        self.uniform = math.log(vocab_size)
        self.stall_frac = stall_frac
        self.since: tuple[int, float] | None = None  # (step, frac) where the current stall began

    def check(self, loss: float, step: int, frac: float) -> None:
        if self.stall_frac <= 0:
            return
        if abs(loss - self.uniform) > STALL_TOL * self.uniform:
            self.since = None
            return
        if self.since is None:
            self.since = (step, frac)
        s_step, s_frac = self.since
        if frac - s_frac >= self.stall_frac and step - s_step >= STALL_MIN_STEPS:
            raise DegenerateModelError(
                f"step {step}: the training loss has stayed at {loss:.4f} ~ ln(vocab) = {self.uniform:.4f} "
                f"(the uniform distribution) since step {s_step}, {100 * (frac - s_frac):.0f}% of the run; "
                "the model is not learning: lower optim.matrix_lr / optim.tied_embed_lr "
                "(or set train.stall_frac=0 to disable this check)")

    def state_dict(self) -> dict:
        return {"since": list(self.since) if self.since else None}

    def load_state_dict(self, state: dict) -> None:
        since = state.get("since")
        self.since = (int(since[0]), float(since[1])) if since else None


def check_finite_eval(res: dict, what: str) -> dict:
    """`res` unchanged when val_loss and val_bpb are finite, else DegenerateModelError."""
    bad = {k: res.get(k) for k in ("val_loss", "val_bpb")
           if not isinstance(res.get(k), (int, float)) or not math.isfinite(res[k])}
    if bad:
        raise DegenerateModelError(
            f"{what}: {', '.join(f'{k} is {v}' for k, v in bad.items())}; the model is broken "
            "(weights or logits not finite): lower optim.matrix_lr / optim.tied_embed_lr or set "
            "optim.grad_clip, then train again")
    return res
