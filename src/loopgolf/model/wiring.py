"""How optional tricks plug into the model: decided once at construction, so `forward` is a plain loop.

A trick is a `Feature` subclass. `build(cfg, shape)` returns it, or None when its config field is off
(litgpt's nn.Identity idea: absent tricks cost nothing and need no branch). `create()` gives the
parameters/modules it adds, registered on the GPT under their API names (gpt.py docstring). Then:

- model hooks (`model_hooks`): "token" (x, idx) -> x before the residual dtype cast, "stream"
  (x, idx) -> x after it, "normed" (x, idx) -> x after the embedding's rms_norm (x0 is its result),
  "loss" (nll, h, targets, model) -> nll;
- per-virtual-layer ops (`at(spec)`, nanochat's has_ve(layer) predicate turned into a lookup):
  list hooks "pre"/"post" (x, ctx) -> x around the block, "qkv" (x, q, k, v) -> (q, k, v), "v" (v, ctx)
  -> v, "attn_y" (y, v, x) -> y after the attention kernel (x: the attention's normalized input),
  "out" (y, out) -> out after the output projection; and the single-valued hooks "controls" (ctx) ->
  (attn_scale, mlp_scale, resid_mix), "norm", "residual" (x, mix, ctx, attn, mlp, norm) -> x, "mlp"
  and "attend" (q, k, v, ctx) -> y (the attention kernel: causal SDPA, or document-isolated), whose
  defaults are the baseline's (blocks.py) and which at most one trick may replace.

`wire(plan, ...)` turns a plan into one `Layer` per virtual layer holding exactly the ops that layer
runs. Ops that need a bare model parameter (e.g. `loop_embed`) look it up on `ctx.model` at call time,
so `.to(device)` or `load_state_dict(assign=True)` can never leave an op holding a stale tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.recurrence import LayerSpec, RecurrencePlan, parse_int_list

LIST_HOOKS = ("pre", "post", "qkv", "v", "attn_y", "out")
SINGLE_HOOKS = ("controls", "norm", "residual", "mlp", "attend")
MODEL_HOOKS = ("token", "stream", "normed", "loss")


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the per-layer tensors, taken over the plans of every training stage."""

    dim: int
    kv_dim: int
    n_blocks: int
    n_slots: int  # rows of per-virtual-layer tensors
    n_skip_rows: int  # U-Net skip-weight rows
    max_visits: int  # visits of the most-visited block (per-visit tensors have max_visits - 1)
    repeat_keys: tuple[tuple[int, int], ...]  # (block, visit slot > 0) pairs that run in training
    ve_layers: tuple[int, ...]  # virtual layers with V-injection (negative = from the end)
    max_skip_pairs: int = 0  # model.unet_max_pairs: decoder layers that pop a skip; 0 = the plan's own

    @classmethod
    def of(cls, cfg: ModelConfig, plans: list[RecurrencePlan]) -> ModelShape:
        layers = [s for p in plans for s in p.layers()]
        cap = cfg.unet_max_pairs
        return cls(dim=cfg.dim, kv_dim=cfg.n_kv_heads * (cfg.dim // cfg.n_heads),
                   n_blocks=plans[-1].n_blocks, n_slots=max(s.slot for s in layers) + 1,
                   n_skip_rows=max((max(r) + 1 for p in plans if (r := used_skip_rows(p, cap))), default=0),
                   max_visits=max(s.visit_slot for s in layers) + 1,
                   repeat_keys=tuple(sorted({(s.block, s.visit_slot) for s in layers if s.visit_slot > 0})),
                   ve_layers=parse_int_list(cfg.ve_layers), max_skip_pairs=cap)

    def check(self, plan: RecurrencePlan) -> None:
        """Raise ValueError unless every slot `plan` asks for exists in a model of this shape."""
        problems = []
        if plan.n_blocks != self.n_blocks:
            problems.append(f"uses {plan.n_blocks} blocks; the model has {self.n_blocks}")
        if max(plan.slots) >= self.n_slots:
            problems.append(f"uses parameter slot {max(plan.slots)}; the model has {self.n_slots}")
        if max(plan.visit_slots) >= self.max_visits:
            problems.append(f"uses visit slot {max(plan.visit_slots)}; the model has {self.max_visits}")
        rows = used_skip_rows(plan, self.max_skip_pairs)
        if rows and self.n_skip_rows and max(rows) >= self.n_skip_rows:
            problems.append(f"uses skip row {max(rows)}; the model has {self.n_skip_rows}")
        if problems:
            raise ValueError(f"plan {plan.spec!r} does not fit the model: {'; '.join(problems)}. Derive "
                             "it from the trained plan with plan.with_loops(k)")


def used_skip_rows(plan: RecurrencePlan, cap: int) -> tuple[int, ...]:
    """Skip-weight rows of the U-Net pairs that run: the first `cap` decoder layers' (0 = all)."""
    return plan.skip_rows[:cap] if cap else plan.skip_rows


class Context:
    """Per-forward state the layers' ops share: the model, the tokens, x0 (the normalized embedding),
    the U-Net skip stack, each block's latest output, tables computed once per forward, and `lanes`
    (streams carried between layers beside x, e.g. the second lane of a two-lane residual)."""

    def __init__(self, model: nn.Module, idx: torch.Tensor, x0: torch.Tensor):
        self.model, self.idx, self.x0 = model, idx, x0
        self.skips: list[torch.Tensor] = []
        self.last_out: dict[int, torch.Tensor] = {}
        self.lanes: dict[str, torch.Tensor] = {}
        self._once: dict[str, Any] = {}

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """`make()` computed on first use in this forward (e.g. value-embedding lookups)."""
        if key not in self._once:
            self._once[key] = make()
        return self._once[key]


@dataclass(frozen=True)
class Layer:
    """What one virtual layer runs: its block and the ops of every hook (see module docstring)."""

    spec: LayerSpec
    block: nn.Module
    pre: tuple[Callable, ...]
    post: tuple[Callable, ...]
    qkv: tuple[Callable, ...]
    v: tuple[Callable, ...]
    attn_y: tuple[Callable, ...]
    out: tuple[Callable, ...]
    controls: Callable
    norm: Callable
    residual: Callable
    mlp: Callable
    attend: Callable


class Feature:
    """Base of an optional trick (see module docstring). Subclasses set `field`, the config field
    that switches them on, and override what they need."""

    field: str = ""
    training_only = False  # its parameters never ship (GPT.shipped_state strips them)

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape) -> Feature | None:
        return cls(cfg, shape) if getattr(cfg, cls.field) else None

    def create(self) -> dict[str, nn.Module | nn.Parameter]:
        """Parameters/modules to register on the GPT, by API name (called once)."""
        return {}

    def init_weights(self, model: nn.Module) -> None:
        """Re-initialization that runs after the core's (GPT.init_weights); most tricks need none."""

    def model_hooks(self) -> dict[str, Callable]:
        return {}

    def at(self, spec: LayerSpec) -> dict[str, Callable]:
        return {}

    def layers_of(self, plan: RecurrencePlan) -> list[dict[str, Callable]]:
        """The ops of every virtual layer of `plan`: `at(spec)` per layer, unless a trick needs the
        whole plan to decide (e.g. the two-lane residual, whose lanes span the final layers)."""
        return [self.at(spec) for spec in plan.layers()]


def wire(plan: RecurrencePlan, blocks: nn.ModuleList, features: list[Feature],
         defaults: Callable[[nn.Module], dict[str, Callable]]) -> tuple[Layer, ...]:
    """One Layer per virtual layer of `plan`: the default single hooks of its block (`defaults`),
    replaced by at most one feature each, and the list hooks of every feature in registry order."""
    out = []
    per_feature = [f.layers_of(plan) for f in features]
    for spec in plan.layers():
        block = blocks[spec.block]
        ops: dict[str, Any] = {h: [] for h in LIST_HOOKS}
        single = defaults(block)
        owner: dict[str, Feature] = {}
        for f, layer_ops in zip(features, per_feature):
            for hook, op in layer_ops[spec.v].items():
                if hook in LIST_HOOKS:
                    ops[hook].append(op)
                elif hook in SINGLE_HOOKS:
                    if hook in owner:
                        raise ValueError(f"{type(f).__name__} and {type(owner[hook]).__name__} both replace "
                                         f"the {hook!r} of virtual layer {spec.v}; turn one of them off")
                    owner[hook], single[hook] = f, op
                else:
                    raise ValueError(f"{type(f).__name__}.at returned unknown hook {hook!r}")
        out.append(Layer(spec=spec, block=block, **{h: tuple(v) for h, v in ops.items()}, **single))
    return tuple(out)
