"""Residual-stream tricks that run between blocks, one op per virtual layer (model/wiring.py).

In registry order (`TRICKS`), which is the order their "pre" ops add to x before a block:
recurrence scale (x *= s), U-Net skip (plain or gated), loop embedding, residual value embeddings, cross-repeat skip.
Their parameters are bare tensors on the GPT (`skip_weights`, `loop_embed`, ...), sized by the plan
slots of every stage (ModelShape) and read on `ctx.model` when the op runs.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.recurrence import LayerSpec
from loopgolf.model.wiring import Context, Feature, ModelShape


def _param(shape, fill: float) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, fill))


class RecurrenceScales(Feature):
    """A learned per-dim scale of the stream before each virtual layer (seed PR #21 L725-728, L758-759;
    model.recurrence_scales), so a shared block's visits see differently scaled inputs:

        x = x * recurrence_scales[slot]        (recurrence_scales (n_slots, d), init 1)

    Its "pre" op runs first, before the U-Net skip is added (the PR's order)."""

    field = "recurrence_scales"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.rows, self.dim = shape.n_slots, cfg.dim

    def create(self):
        return {"recurrence_scales": _param((self.rows, self.dim), 1.0)}

    def at(self, spec: LayerSpec):
        return {"pre": partial(self.scale, i=spec.slot)}

    @staticmethod
    def scale(x: torch.Tensor, ctx: Context, i: int) -> torch.Tensor:
        return x * ctx.model.recurrence_scales[i].to(x.dtype)


class UNetSkip(Feature):
    """U-Net skips over the virtual layer sequence (baseline L670-713; model.unet_skips): the first
    half of the virtual layers push their output; each decoder layer pops the latest and adds it:

        x += skip_weights[row] * skips.pop()        (skip_weights (n_pairs, d), init 1)

    The plan (LayerSpec.skip_push / skip_row) decides the pairing and which row a deeper eval-time
    plan reuses. model.unet_max_pairs = m > 0: only the first m decoder layers pop (PR #1290 keeps
    its 11 physical layers' 5 pairs when the loop makes 13 virtual layers, L964-970: every encoder
    layer still pushes, so the first encoder layer's output goes unused)."""

    field = "unet_skips"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.rows, self.dim, self.cap = shape.n_skip_rows, cfg.dim, shape.max_skip_pairs

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg, shape) if cfg.unet_skips and not cfg.skip_gated and shape.n_skip_rows else None

    def create(self):
        return {"skip_weights": _param((self.rows, self.dim), 1.0)}

    def at(self, spec: LayerSpec):
        ops = {}
        if spec.skip_row >= 0 and (not self.cap or spec.v - spec.n_virtual // 2 < self.cap):
            ops["pre"] = partial(self.pop_into, j=spec.skip_row)
        if spec.skip_push:
            ops["post"] = push_skip
        return ops

    def pop_into(self, x: torch.Tensor, ctx: Context, j: int) -> torch.Tensor:
        return self.merge(x, ctx.skips.pop(), ctx.model, j)

    def merge(self, x: torch.Tensor, skip: torch.Tensor, model: nn.Module, j: int) -> torch.Tensor:
        return x + model.skip_weights[j].to(x.dtype) * skip


class GatedUNetSkip(UNetSkip):
    """Sigmoid-gated U-Net skips (record (a) L416; model.skip_gated):

        s = skip_weights[row] * skips.pop();  x = lerp(s, x, sigmoid(skip_gates[row]))

    skip_gates (n_pairs, d) start at 0: an even mix of the skip and the stream."""

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg, shape) if cfg.unet_skips and cfg.skip_gated and shape.n_skip_rows else None

    def create(self):
        return {**super().create(), "skip_gates": _param((self.rows, self.dim), 0.0)}

    def merge(self, x, skip, model, j):
        s = model.skip_weights[j].to(x.dtype) * skip
        return torch.lerp(s, x, torch.sigmoid(model.skip_gates[j]).to(x.dtype))


def push_skip(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    ctx.skips.append(x)
    return x


class LoopEmbedding(Feature):
    """A learned vector added before each virtual layer, so shared blocks know their depth (PR #1453;
    model.loop_embed):  x += loop_embed[slot]   (loop_embed (n_slots, d), init 0)."""

    field = "loop_embed"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.shape = (shape.n_slots, cfg.dim)

    def create(self):
        return {"loop_embed": _param(self.shape, 0.0)}

    def at(self, spec: LayerSpec):
        return {"pre": partial(self.add, slot=spec.slot)}

    @staticmethod
    def add(x: torch.Tensor, ctx: Context, slot: int) -> torch.Tensor:
        return x + ctx.model.loop_embed[slot].to(x.dtype)


class ResidualValueEmbeds(Feature):
    """Residual-form value embeddings (PR #1453; model.value_embeds = K): K full-width token tables
    added to the stream before every virtual layer with per-layer, per-table scales:

        x += sum_k ve_scales[slot, k] * value_embeds[k][idx]     (ve_scales (n_slots, K, d), init 0)

    Tables ~ N(0, model.value_embeds_std), or N(0, model.embed_init_std) when it is 0 (PR #1453
    keeps nn.Embedding's N(0, 1), L913: value_embeds_std=1)."""

    field = "value_embeds"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.cfg, self.n_slots = cfg, shape.n_slots
        self.tables = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.dim) for _ in range(cfg.value_embeds))

    def create(self):
        c = self.cfg
        return {"value_embeds": self.tables, "ve_scales": _param((self.n_slots, c.value_embeds, c.dim), 0.0)}

    def init_weights(self, model: nn.Module) -> None:
        std = self.cfg.value_embeds_std or self.cfg.embed_init_std
        for emb in model.value_embeds:
            nn.init.normal_(emb.weight, std=std)

    def at(self, spec: LayerSpec):
        return {"pre": partial(self.add, slot=spec.slot)}

    @staticmethod
    def add(x: torch.Tensor, ctx: Context, slot: int) -> torch.Tensor:
        m = ctx.model
        ves = ctx.once("value_embeds", lambda: [emb(ctx.idx).to(x.dtype) for emb in m.value_embeds])
        for k, ve in enumerate(ves):
            x = x + m.ve_scales[slot, k].to(x.dtype) * ve
        return x


class CrossRepeatSkip(Feature):
    """Cross-repeat skip (PR #1453 L963-977; model.cross_repeat): on a block's r-th repeat (r >= 1),
    add its output from the previous visit with a learned scale:

        x += cross_repeat_scales[block, r - 1] * out_block(previous visit)
        (cross_repeat_scales (n_blocks, max_visits - 1, d), init 0; r = the layer's visit slot)"""

    field = "cross_repeat"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.shape = (shape.n_blocks, shape.max_visits - 1, cfg.dim)

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg, shape) if cfg.cross_repeat and shape.max_visits > 1 else None

    def create(self):
        return {"cross_repeat_scales": _param(self.shape, 0.0)}

    def at(self, spec: LayerSpec):
        ops = {"post": partial(self.record, block=spec.block)}
        if spec.visit_slot > 0:
            ops["pre"] = partial(self.add, block=spec.block, r=spec.visit_slot - 1)
        return ops

    @staticmethod
    def add(x: torch.Tensor, ctx: Context, block: int, r: int) -> torch.Tensor:
        return x + ctx.model.cross_repeat_scales[block, r].to(x.dtype) * ctx.last_out[block]

    @staticmethod
    def record(x: torch.Tensor, ctx: Context, block: int) -> torch.Tensor:
        ctx.last_out[block] = x
        return x


TRICKS = (RecurrenceScales, UNetSkip, GatedUNetSkip, LoopEmbedding, ResidualValueEmbeds, CrossRepeatSkip)
