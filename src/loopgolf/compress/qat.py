"""Quantization-aware training, applied to a model from outside through torch parametrizations.

`apply_qat` wraps the weight of every nn.Linear that the artifact stores on a per-row grid
(compress/rules.py grid_quantizers: the PARAM_KINDS storage column, sizes, quant.scheme and
quant.bits_rules) with a FakeQuant parametrization, so the model code is untouched:
  - "ste": the forward sees exactly the weights the exporter will write, dequantize(quantize(w)),
    computed by the exporter's own code path (RowGridQuantizer.grid: percentile / search / SDClip
    clip, ternary absmean, the row_scale_min floor but not the export-only 1/qmax one, fp16-rounded
    scales); the backward passes the gradient straight through (PR #927: int6 STE from step 0);
  - "noise": in training mode the forward adds uniform noise of one quantization step of that same
    per-row (fp16) scale (PR #363: "noisy QAT" on shared blocks cut the quantization gap from 0.37
    to 0.002); eval is the raw weight.
The grid is recomputed from the current weight at every forward (the scale follows the weight, as
the exporter's would). The parametrized Parameter is the same object as before, so an optimizer
built earlier keeps working; state_dict names change, so `remove_qat` (or `plain_state_dict`) must
run before saving. `set_qat_enabled` switches the fake quantization on late (quant.qat_start_frac).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from loopgolf.compress.quant import RowGridQuantizer
from loopgolf.compress.rules import grid_quantizers
from loopgolf.config import QuantConfig


class FakeQuant(nn.Module):
    def __init__(self, quantizer: RowGridQuantizer, qcfg: QuantConfig, mode: str,
                 enabled: bool = True) -> None:
        super().__init__()
        if mode not in ("ste", "noise"):
            raise ValueError(f"QAT mode {mode!r}: choose ste or noise")
        self.quantizer, self.qcfg, self.mode, self.enabled = quantizer, qcfg, mode, enabled

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        if self.mode == "noise":
            if not self.training:
                return w
            _, scale = self.quantizer.grid(w.detach().float(), self.qcfg)
            return w + (torch.rand_like(w) - 0.5) * scale.to(w.dtype)[:, None]
        wq = self.quantizer.fake_quantize(w, self.qcfg).to(w.dtype)
        return wq + (w - w.detach())  # value: exactly wq; gradient: identity (straight through)


def apply_qat(model: nn.Module, qcfg: QuantConfig, mode: str | None = None,
              enabled: bool = True) -> list[str]:
    """Parametrize the row-grid nn.Linear weights of `model`; returns their names."""
    mode = qcfg.qat if mode is None else mode
    grid = grid_quantizers(plain_state_dict(model), qcfg)
    qcfg = dataclasses.replace(qcfg, row_scale_min_qmax=False)  # an export-only floor (config_variants.py)
    done = []
    for name, mod in model.named_modules():
        key = f"{name}.weight"
        if isinstance(mod, nn.Linear) and key in grid:
            if not parametrize.is_parametrized(mod, "weight"):
                parametrize.register_parametrization(mod, "weight",
                                                     FakeQuant(grid[key], qcfg, mode, enabled))
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


def plain_name(name: str) -> str:
    """A parameter's name without QAT's parametrization: x.parametrizations.weight.original -> x.weight."""
    return name.replace("parametrizations.weight.original", "weight")


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with the raw weights under their usual names (QAT applied or not)."""
    return {plain_name(k): v for k, v in model.state_dict().items()}
