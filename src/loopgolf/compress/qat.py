"""Quantization-aware training: one owner (`QatWeights`) for which weights train on their export grid,
whether QAT is on, and how the forward sees those weights. The model code is untouched.

The weights are every nn.Linear weight that the artifact stores on a per-row grid
(compress/rules.py grid_quantizers: the PARAM_KINDS storage column, sizes, quant.scheme and
quant.bits_rules). Two modes:
  - "ste": the forward sees exactly the weights the exporter will write, dequantize(quantize(w)),
    computed by the exporter's own code path (RowGridQuantizer.grid: percentile / search / SDClip
    clip, ternary absmean, the row_scale_min floor but not the export-only 1/qmax one, fp16-rounded
    scales); the gradient passes straight through (PR #927: int6 STE from step 0). `applied()`
    does this by swapping values: for one optimizer step's forwards and backwards each weight holds
    its fake-quantized value, and afterwards its float value again. The gradient of the loss at
    wq is the straight-through gradient of w (d wq / d w := I), so this is the usual STE exactly,
    and the compiled graph is the same with QAT on or off: switching QAT on late compiles nothing,
    and the grid is computed once per step (not once per micro-batch and loop repeat, as a
    parametrization inside the forward would). The grid follows the weight: it is recomputed from
    the current float weight at every step, as the exporter's would be.
  - "noise": in training mode the forward adds uniform noise of one quantization step of that same
    per-row (fp16) scale (PR #363: "noisy QAT" on shared blocks cut the quantization gap from 0.37
    to 0.002); eval sees the raw weight. A fresh draw at every use of a weight (each micro-batch and
    each loop repeat, as PR #363's noise sits inside the layer), so it is a torch parametrization
    in the forward: state_dict names change (`plain_state_dict`, `with_parametrized_names`), and
    QAT on and off are two compiled graphs (`separate_graphs`).
`set_enabled` switches QAT on late (quant.qat_start_frac); `remove` leaves the plain float weights.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from loopgolf.compress.quant import RowGridQuantizer
from loopgolf.compress.rules import grid_quantizers
from loopgolf.config import QuantConfig

PARAMETRIZED = "parametrizations.weight.original"


class GridNoise(nn.Module):
    """quant.qat=noise's parametrization: w + U(-1/2, 1/2) x the row's export step, in training mode."""

    def __init__(self, quantizer: RowGridQuantizer, qcfg: QuantConfig, enabled: bool = True) -> None:
        super().__init__()
        self.quantizer, self.qcfg, self.enabled = quantizer, qcfg, enabled

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and self.training):
            return w
        _, scale = self.quantizer.grid(w.detach().float(), self.qcfg)
        return w + (torch.rand_like(w) - 0.5) * scale.to(w.dtype)[:, None]


class QatWeights:
    """QAT of one model (module docstring). mode None takes quant.qat; "off" holds no weights."""

    def __init__(self, model: nn.Module, qcfg: QuantConfig, mode: str | None = None,
                 enabled: bool = True) -> None:
        self.model, self.mode = model, qcfg.qat if mode is None else mode
        if self.mode not in ("off", "ste", "noise"):
            raise ValueError(f"QAT mode {self.mode!r}: choose off, ste or noise")
        # the 1/qmax scale floor is export-only (config_variants.py): PR #927's QAT trains without it
        self.qcfg = dataclasses.replace(qcfg, row_scale_min_qmax=False)
        self.enabled = enabled
        self.targets: list[tuple[str, nn.Parameter, RowGridQuantizer]] = []
        if self.mode != "off":
            grid = grid_quantizers(plain_state_dict(model), qcfg)
            for name, mod in model.named_modules():
                key = f"{name}.weight"
                if isinstance(mod, nn.Linear) and key in grid and not parametrize.is_parametrized(mod, "weight"):
                    self.targets.append((key, mod.weight, grid[key]))
                    if self.mode == "noise":
                        parametrize.register_parametrization(mod, "weight", GridNoise(grid[key], self.qcfg, enabled))
        self._floats: list[torch.Tensor] = []  # ste: the float weights while `applied` holds the grid

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.targets]

    @property
    def on(self) -> bool:
        return bool(self.targets) and self.enabled

    @property
    def separate_graphs(self) -> bool:
        """Whether QAT on and off are different compiled graphs (noise: a parametrization)."""
        return self.mode == "noise" and bool(self.targets)

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        for m in self.model.modules():
            if isinstance(m, GridNoise):
                m.enabled = enabled

    @contextmanager
    def applied(self):
        """The forward's view of the weights inside the block: ste and on, the export grid (module
        docstring); otherwise the weights as they are. Gradients computed inside land on the float
        weights, which hold their float values again afterwards (also after an error)."""
        if not (self.on and self.mode == "ste") or self._floats:  # off, noise, or already applied
            yield
            return
        with torch.no_grad():
            self._floats = [p.detach().clone() for _, p, _ in self.targets]
            for _, p, q in self.targets:
                p.copy_(q.fake_quantize(p, self.qcfg))
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p, _), w in zip(self.targets, self._floats):
                    p.copy_(w)
            self._floats = []

    def with_parametrized_names(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plain state_dict (checkpoints hold plain names) under the model's current names."""
        if self.mode != "noise":
            return state
        noisy = {n[: -len(".weight")] for n in self.names}
        return {(f"{k[: -len('.weight')]}.{PARAMETRIZED}" if k[: -len(".weight")] in noisy else k): v
                for k, v in state.items()}

    def remove(self) -> None:
        """QAT off for good: the plain float weights, under their plain names."""
        for mod in self.model.modules():
            if parametrize.is_parametrized(mod, "weight") and any(
                    isinstance(p, GridNoise) for p in mod.parametrizations["weight"]):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        self.targets, self.enabled = [], False


def plain_name(name: str) -> str:
    """A parameter's name without a parametrization: x.parametrizations.weight.original -> x.weight."""
    return name.replace(PARAMETRIZED, "weight")


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with the raw weights under their usual names (QAT applied or not)."""
    return {plain_name(k): v for k, v in model.state_dict().items()}
