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

# Linear weights orthogonalized by Muon, wherever they sit (blocks, repeat MLPs, bigram/VE projections)
MATRIX = re.compile(r"\.(c_q|c_k|c_v|proj|fc)\.weight$")
EMBEDDING = re.compile(r"^(tok_emb|value_embeds\.\d+|bigram\.table|ve_inject\.table)\.weight$")
CONTROL = re.compile(r"(attn_scale|mlp_scale|resid_mix|q_gain|skip_weights|skip_gates|loop_embed|"
                     r"cross_repeat_scales|ve_scales|bigram\.scale|smear\.gate|ve_inject\.scales|"
                     r"lora\.[qkvo]_[ab])$")


@dataclass(frozen=True)
class ParamRule:
    group: str  # adam_embed | adam_head | muon | adam_scalar
    matches: Callable[[str, torch.Tensor], bool]
    lr_field: str  # OptimConfig field holding the base learning rate


PARAM_RULES: tuple[ParamRule, ...] = (
    ParamRule("adam_embed", lambda n, p: bool(EMBEDDING.match(n)), "tied_embed_lr"),
    ParamRule("adam_head", lambda n, p: n == "lm_head.weight", "head_lr"),
    ParamRule("muon", lambda n, p: p.ndim == 2 and bool(MATRIX.search(n)), "matrix_lr"),
    ParamRule("adam_scalar", lambda n, p: bool(CONTROL.search(n)), "scalar_lr"),
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


STANDARD_NS = ((3.4445, -4.7750, 2.0315),)  # modded-nanogpt / baseline L96-109, every iteration
# Polar Express: one minimax (a, b, c) per iteration (top record L1716-1748)
POLAR_EXPRESS_NS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NS_COEFFS = {"standard": STANDARD_NS, "polar": POLAR_EXPRESS_NS}


def newton_schulz5(g: torch.Tensor, steps: int, eps: float = 1e-7,
                   coeffs: tuple = STANDARD_NS) -> torch.Tensor:
    """Approximate orthogonalization of each matrix in g (..., rows, cols): bf16 on CUDA (tensor
    cores), float32 elsewhere (CPUs emulate bf16 matmuls: 12x slower measured on 2 cores)."""
    x = g.bfloat16() if g.is_cuda else g.float()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = g.size(-2) > g.size(-1)
    if transposed:
        x = x.mT
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
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
                 weight_decay: float = 0.0, compiled: bool = False, row_norm: bool = False,
                 coeffs: str = "standard"):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov,
                                      weight_decay=weight_decay))
        self._ns = _ns_fn(compiled)
        self.row_norm = row_norm  # MuonEq-R: unit-L2 rows before Newton-Schulz (record (b) L347)
        self.coeffs = NS_COEFFS[coeffs]

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
                g = torch.stack(upd)
                if self.row_norm:
                    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-7)
                ortho = self._ns(g, group["ns_steps"], coeffs=self.coeffs)
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
                   weight_decay=cfg.weight_decay, compiled=fused, row_norm=cfg.muon_row_norm,
                   coeffs=cfg.ns_coeffs)
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
        wd = cfg.embed_weight_decay if name == "adam_embed" else cfg.adam_weight_decay
        adam_groups.append(dict(params=params, lr=lr, base_lr=lr, name=name, weight_decay=wd))
    if adam_groups:  # decoupled weight decay per group (AdamW)
        opts.append(torch.optim.AdamW(adam_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                      fused=fused))
    return opts
