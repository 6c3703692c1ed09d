"""Tricks that change how a block runs at one virtual layer: they replace one of the layer's
single-valued hooks ("controls", "norm", "residual", "mlp"; model/wiring.py), whose defaults are the
baseline's (Block.default_ops in model/blocks.py).
"""
from __future__ import annotations

import torch
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import MLPS, rms_norm
from loopgolf.model.recurrence import LayerSpec
from loopgolf.model.wiring import Feature, ModelShape


class PerLayerScales(Feature):
    """Residual controls per virtual layer instead of per block (PR #927; model.per_layer_scales):
    a shared block's visits each get their own attn_scale, mlp_scale and resid_mix, used as

        x = mix[0] x + mix[1] x0;  x += attn_scale * attn(.);  x += mlp_scale * mlp(.)

    layer_attn_scale, layer_mlp_scale (n_slots, d), init 1; layer_resid_mix (n_slots, 2, d), init
    (1, 0). The blocks then hold none of their own (blocks.Block)."""

    field = "per_layer_scales"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.n, self.d = shape.n_slots, cfg.dim

    def create(self):
        n, d = self.n, self.d
        return {"layer_attn_scale": nn.Parameter(torch.ones(n, d)),
                "layer_mlp_scale": nn.Parameter(torch.ones(n, d)),
                "layer_resid_mix": nn.Parameter(torch.stack([torch.ones(n, d), torch.zeros(n, d)], 1))}

    def at(self, spec: LayerSpec):
        i = spec.slot
        return {"controls": lambda ctx: (ctx.model.layer_attn_scale[i], ctx.model.layer_mlp_scale[i],
                                         ctx.model.layer_resid_mix[i])}


class LNScale(Feature):
    """The normalized block input scaled by 1/sqrt(block + 1) (record (c) L445; model.ln_scale):
    h = rms_norm(x) / sqrt(b + 1) for physical block b, damping deeper blocks. No parameters."""

    field = "ln_scale"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        pass

    def at(self, spec: LayerSpec):
        return {"norm": lambda x, s=(spec.block + 1) ** -0.5: rms_norm(x) * s}


def parallel_residual(x: torch.Tensor, attn, mlp, norm) -> torch.Tensor:
    """GPT-J single-lane parallel residual (record (d) L109-113): h = norm(x); x + attn(h) + mlp(h)."""
    h = norm(x)
    return x + attn(h) + mlp(h)


class ParallelResidual(Feature):
    """Physical blocks >= model.parallel_from run attention and MLP on the same normalized input
    (`parallel_residual`); -1 = off."""

    field = "parallel_from"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.first = cfg.parallel_from

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg, shape) if cfg.parallel_from >= 0 else None

    def at(self, spec: LayerSpec):
        return {"residual": parallel_residual} if spec.block >= self.first else {}


class UntiedRepeatMLP(Feature):
    """Repeated visits of a block use their own MLP (record (a) REPEAT_UNTIE_MLP;
    model.untie_repeat_mlp): one MLP per (block, visit >= 1) that runs in training, output projection
    zero-initialized; the attention stays shared. Parameters: repeat_mlps.{k}.fc|proj.weight, k in
    sorted (block, visit) order. A deeper eval-time plan reuses the block's deepest trained visit."""

    field = "untie_repeat_mlp"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.keys = shape.repeat_keys
        self.mlps = nn.ModuleList(MLPS[cfg.mlp](cfg) for _ in self.keys)
        for mlp in self.mlps:
            nn.init.zeros_(mlp.proj.weight)

    def create(self):
        return {"repeat_mlps": self.mlps}

    def at(self, spec: LayerSpec):
        if spec.visit_slot == 0:
            return {}
        key = (spec.block, spec.visit_slot)
        if key not in self.keys:
            raise ValueError(f"no repeat MLP for block {spec.block} visit {spec.visit_slot}")
        return {"mlp": self.mlps[self.keys.index(key)]}


TRICKS = (PerLayerScales, LNScale, ParallelResidual, UntiedRepeatMLP)
