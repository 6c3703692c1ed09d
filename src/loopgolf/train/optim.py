"""Muon for block matrices, Adam for embeddings and control tensors, chosen by a name-pattern table.

PARAM_RULES decides each parameter's optimizer group; `build_optimizers` asserts that every
parameter matches exactly one rule, so a new tensor without a rule fails loudly instead of silently
landing in the wrong group. Muon follows the baseline (techniques.md 2.2): Nesterov momentum, a
5-step Newton-Schulz orthogonalization with coefficients (3.4445, -4.7750, 2.0315) in bf16 after
Frobenius normalization, update scaled by sqrt(max(1, rows/cols)).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from loopgolf.config import ModelConfig, OptimConfig

CONTROL = re.compile(r"(attn_scale|mlp_scale|resid_mix|q_gain|skip_weight)")


@dataclass(frozen=True)
class ParamRule:
    group: str  # adam_embed | adam_head | muon | adam_scalar
    matches: Callable[[str, torch.Tensor], bool]
    lr_field: str  # OptimConfig field holding the base learning rate


def _block_matrix(n: str, p: torch.Tensor) -> bool:
    return n.startswith("blocks.") and p.ndim == 2 and not CONTROL.search(n)


def _scalar(n: str, p: torch.Tensor) -> bool:
    return (n.startswith("blocks.") and (p.ndim < 2 or bool(CONTROL.search(n)))) or n == "skip_weights"


PARAM_RULES: tuple[ParamRule, ...] = (
    ParamRule("adam_embed", lambda n, p: n == "tok_emb.weight", "tied_embed_lr"),
    ParamRule("adam_head", lambda n, p: n == "lm_head.weight", "head_lr"),
    ParamRule("muon", _block_matrix, "matrix_lr"),
    ParamRule("adam_scalar", _scalar, "scalar_lr"),
)


def assign_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    groups: dict[str, list] = {r.group: [] for r in PARAM_RULES}
    problems = []
    for name, p in model.named_parameters():  # shared (looped) blocks appear once
        hits = [r for r in PARAM_RULES if r.matches(name, p)]
        if len(hits) != 1:
            problems.append(f"{name} {tuple(p.shape)} matches {[r.group for r in hits] or 'no rule'}")
        else:
            groups[hits[0].group].append((name, p))
    if problems:
        raise ValueError("optimizer PARAM_RULES must match every parameter exactly once: "
                         + "; ".join(problems))
    return groups


def newton_schulz5(g: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalization of each matrix in g (..., rows, cols), in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = g.size(-2) > g.size(-1)
    if transposed:
        x = x.mT
    for _ in range(steps):
        A = x @ x.mT
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x.mT if transposed else x


_COMPILED_NS = None


def _ns_fn(compiled: bool):
    global _COMPILED_NS
    if not compiled:
        return newton_schulz5
    if _COMPILED_NS is None:
        _COMPILED_NS = torch.compile(newton_schulz5)
    return _COMPILED_NS


class Muon(torch.optim.Optimizer):
    """Muon with Nesterov momentum. Matrices of one shape are orthogonalized together in one
    batched Newton-Schulz call: a few large kernels instead of thousands of tiny launches."""

    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, compiled: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov,
                                      weight_decay=weight_decay))
        self._ns = _ns_fn(compiled)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            by_shape: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, ps in by_shape.items():
                grads = [p.grad for p in ps]
                bufs = []
                for p in ps:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(self.state[p]["momentum_buffer"])
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, grads)
                upd = torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs
                ortho = self._ns(torch.stack(upd), group["ns_steps"])
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                if group["weight_decay"]:
                    torch._foreach_mul_(ps, 1 - lr * group["weight_decay"])
                torch._foreach_add_(ps, [u.to(p.dtype) for u, p in zip(ortho.unbind(0), ps)],
                                    alpha=-lr * scale)


def build_optimizers(model: nn.Module, cfg: OptimConfig, mcfg: ModelConfig,
                     fused: bool = False) -> list[torch.optim.Optimizer]:
    """One Muon over the block matrices and one Adam with a group per other rule.
    fused=True (CUDA): fused Adam and a compiled Newton-Schulz."""
    groups = assign_groups(model)
    rules = {r.group: r for r in PARAM_RULES}
    opts: list[torch.optim.Optimizer] = []
    muon_params = [p for _, p in groups["muon"]]
    if muon_params:
        opt = Muon(muon_params, lr=cfg.matrix_lr, momentum=cfg.momentum, ns_steps=cfg.ns_steps,
                   weight_decay=cfg.weight_decay, compiled=fused)
        opt.param_groups[0]["base_lr"] = cfg.matrix_lr
        opts.append(opt)
    adam_groups = []
    for name in ("adam_embed", "adam_head", "adam_scalar"):
        params = [p for _, p in groups[name]]
        if not params:
            continue
        field_name = rules[name].lr_field
        if name == "adam_embed" and not mcfg.tie_embeddings:
            field_name = "embed_lr"
        lr = getattr(cfg, field_name)
        adam_groups.append(dict(params=params, lr=lr, base_lr=lr, name=name))
    if adam_groups:
        opts.append(torch.optim.Adam(adam_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                     fused=fused))
    return opts
