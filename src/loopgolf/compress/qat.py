"""Quantization-aware training, applied to a model from outside through torch parametrizations.

`apply_qat` wraps the weight of every nn.Linear whose tensor the rules give a row-grid scheme
(intN_row, ternary_row) with a FakeQuant parametrization, so the model code is untouched:
  - "ste": the forward sees round-to-nearest weights on a per-row absmax grid (PR #927: int6 STE
    from step 0), the backward passes the gradient straight through;
  - "noise": in training mode the forward adds uniform noise of one quantization step (PR #363:
    "noisy QAT" on shared blocks cut the quantization gap from 0.37 to 0.002); eval is exact.
The parametrized Parameter is the same object as before, so an optimizer built earlier keeps
working; state_dict names change, so `remove_qat` (or `plain_state_dict`) must run before saving.
`set_qat_enabled` switches the fake quantization on late (quant.qat_start_frac).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from loopgolf.compress.quant import QUANTIZERS, RowGridQuantizer
from loopgolf.compress.rules import assign_schemes
from loopgolf.config import QuantConfig


class FakeQuant(nn.Module):
    def __init__(self, qmax: int, mode: str, enabled: bool = True) -> None:
        super().__init__()
        if mode not in ("ste", "noise"):
            raise ValueError(f"QAT mode {mode!r}: choose ste or noise")
        self.qmax, self.mode, self.enabled = qmax, mode, enabled

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale = w.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / self.qmax
        if self.mode == "noise":
            return w + (torch.rand_like(w) - 0.5) * scale if self.training else w
        wq = torch.clamp(torch.round(w / scale), -self.qmax, self.qmax) * scale
        return w + (wq - w).detach()


def apply_qat(model: nn.Module, qcfg: QuantConfig, mode: str | None = None,
              enabled: bool = True) -> list[str]:
    """Parametrize the row-grid nn.Linear weights of `model`; returns their names."""
    mode = qcfg.qat if mode is None else mode
    state = {k: v for k, v in model.state_dict().items()}
    schemes = assign_schemes(state, qcfg)
    done = []
    for name, mod in model.named_modules():
        key = f"{name}.weight"
        quantizer = QUANTIZERS.get(schemes.get(key, ""))
        if isinstance(mod, nn.Linear) and isinstance(quantizer, RowGridQuantizer):
            if not parametrize.is_parametrized(mod, "weight"):
                parametrize.register_parametrization(mod, "weight",
                                                     FakeQuant(quantizer.qmax, mode, enabled))
                done.append(key)
    return done


def set_qat_enabled(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.enabled = enabled


def remove_qat(model: nn.Module) -> None:
    """Drop the parametrizations, keeping the raw (float) weights."""
    for mod in model.modules():
        if parametrize.is_parametrized(mod, "weight") and any(
                isinstance(p, FakeQuant) for p in mod.parametrizations["weight"]):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with the raw weights under their usual names (QAT applied or not)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k.replace("parametrizations.weight.original", "weight")] = v
    return out
