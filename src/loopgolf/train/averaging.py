"""Weight averaging (EMA or SWA) with horizons expressed as fractions of the run, swapped in before
compression, over the parameters whose PARAM_KINDS row says `averaged` (model/params.py); its
state travels in checkpoints so a resumed run averages exactly as an uninterrupted one.

A fixed per-step EMA decay ties the averaging horizon to a step count: seed 004's decay 0.997 (a
~330-step time constant) on a 330-step proxy run averaged in the early, bad weights and cost 0.43 bpb
(issue 3). Here the decay follows the run: tau = horizon_frac x (expected total steps), where the
expected total comes from the budget and the measured step time, so the same preset averages over the
same share of training on a CPU minute or on 8 GPUs x 10 minutes. The trigger table
(train/triggers.py) supplies the progress and expected steps; this class keeps the averages.
"""
from __future__ import annotations

import torch

from loopgolf.compress.qat import plain_name
from loopgolf.model.params import kinds_of


def plain_named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters under their plain names: noise QAT's parametrization (compress/qat.py), applied after
    this class is built, renames `x.weight` to `x.parametrizations.weight.original`, and the averages,
    their checkpoints and swap_in keep the plain name (the raw weight is the one averaged)."""
    return {plain_name(n): p for n, p in model.named_parameters()}


class WeightAverage:
    def __init__(self, model: torch.nn.Module, ema_horizon_frac: float = 0.0, swa_start_frac: float = 0.0,
                 swa_every_frac: float = 0.01):
        self.model = model
        named = list(plain_named_parameters(model).items())
        kinds = kinds_of(named)
        self.names = [n for n, _ in named if kinds[n].averaged]  # the parameter table decides
        self.ema_horizon = ema_horizon_frac
        self.swa_start, self.swa_every = swa_start_frac, swa_every_frac
        self.avg: dict[str, torch.Tensor] | None = None
        self.count = 0
        self._next_swa = swa_start_frac

    @property
    def enabled(self) -> bool:
        return self.ema_horizon > 0 or self.swa_start > 0

    @torch.no_grad()
    def update(self, frac: float, expected_steps: float) -> None:
        """Call after each optimizer step with run progress in [0, 1] and the expected total steps
        (both from the step's trigger row)."""
        named = plain_named_parameters(self.model)
        params = {n: named[n].detach() for n in self.names}
        if self.ema_horizon > 0:
            tau = max(1.0, self.ema_horizon * expected_steps)
            decay = 1.0 - 1.0 / tau
            if self.avg is None:
                self.avg = {n: p.float().clone() for n, p in params.items()}
            else:
                for n, p in params.items():
                    self.avg[n].lerp_(p.float(), 1.0 - decay)
            self.count += 1
        elif self.swa_start > 0 and frac >= self._next_swa:
            self._next_swa = frac + self.swa_every
            if self.avg is None:
                self.avg = {n: p.float().clone() for n, p in params.items()}
            else:
                for n, p in params.items():
                    self.avg[n].mul_(self.count / (self.count + 1)).add_(p.float(), alpha=1 / (self.count + 1))
            self.count += 1

    @torch.no_grad()
    def swap_in(self) -> int:
        """Copy the averaged weights into the model (for evaluation and compression); returns the
        number of averaged snapshots (0 = nothing to swap)."""
        if self.avg is None:
            return 0
        for n, p in plain_named_parameters(self.model).items():
            if n in self.avg:
                p.copy_(self.avg[n].to(p.dtype))
        return self.count

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"avg": {k: v.detach().cpu() for k, v in (self.avg or {}).items()},
                "count": self.count, "next_swa": self._next_swa}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.model.parameters()).device
        avg = state.get("avg") or {}
        self.avg = {k: v.to(device) for k, v in avg.items()} or None
        self.count, self._next_swa = int(state["count"]), float(state["next_swa"])
