"""Muon for the matrices, AdamW for embeddings, head and control tensors, as model/params.py says.

Each parameter's optimizer, learning-rate field and weight-decay field come from its PARAM_KINDS
row (`kinds_of` asserts exactly one row per parameter, so a new tensor without a row fails loudly).
Parameters that share (optimizer, lr field, wd field) form one param group, named after their kinds.
Muon follows the baseline (techniques.md 2.2): Nesterov momentum, a 5-step Newton-Schulz
orthogonalization with coefficients (3.4445, -4.7750, 2.0315) in bf16 after Frobenius normalization,
update scaled by sqrt(max(1, rows/cols)). A 3-D parameter (a stack such as LoRA's
(n_virtual, rows, cols)) is orthogonalized matrix by matrix, with the scale of its last two dims.
"""
from __future__ import annotations

import torch
from torch import nn

from loopgolf.config import ModelConfig, OptimConfig
from loopgolf.model.params import kinds_of

GroupKey = tuple[str, str, str]  # (optimizer, lr field, wd field)


def assign_groups(model: nn.Module, tie_embeddings: bool = True
                  ) -> dict[GroupKey, list[tuple[str, nn.Parameter]]]:
    """(optimizer, lr field, wd field) -> the parameters it trains, in named_parameters order
    (shared, looped blocks appear once); ValueError if a parameter has no PARAM_KINDS row or
    several, or its row says it is not trained."""
    named = list(model.named_parameters())
    kinds = kinds_of(named)
    groups: dict[GroupKey, list[tuple[str, nn.Parameter]]] = {}
    untrained = [n for n, _ in named if kinds[n].optimizer == "none"]
    if untrained:
        raise ValueError(f"parameters whose PARAM_KINDS row trains nothing: {untrained[:5]}")
    for name, p in named:
        k = kinds[name]
        groups.setdefault((k.optimizer, k.lr_field(tie_embeddings), k.wd), []).append((name, p))
    return groups


def group_name(params: list[tuple[str, nn.Parameter]]) -> str:
    """The kinds of a group, joined: e.g. "control" or "attn_matrix+mlp_matrix"."""
    kinds = kinds_of(params)
    return "+".join(dict.fromkeys(kinds[n].kind for n, _ in params))


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
    """Muon with Nesterov momentum. Parameters of one shape are orthogonalized together in one
    batched Newton-Schulz call: a few large kernels instead of thousands of tiny launches. A 3-D
    parameter is a stack of matrices, each orthogonalized on its own (NS works on the last two dims)."""

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
                scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
                if group["weight_decay"]:
                    torch._foreach_mul_(ps, 1 - lr * group["weight_decay"])
                torch._foreach_add_(ps, [u.to(p.dtype) for u, p in zip(ortho.unbind(0), ps)],
                                    alpha=-lr * scale)


def build_optimizers(model: nn.Module, cfg: OptimConfig, mcfg: ModelConfig,
                     fused: bool = False) -> list[torch.optim.Optimizer]:
    """One Muon and one AdamW, each with a param group per (lr field, wd field) of the table.
    fused=True (CUDA): fused Adam and a compiled Newton-Schulz."""
    groups = assign_groups(model, mcfg.tie_embeddings)
    opts: list[torch.optim.Optimizer] = []
    by_opt: dict[str, list[dict]] = {"muon": [], "adam": []}
    for (opt_name, lr_field, wd_field), named in groups.items():
        lr = getattr(cfg, lr_field)
        wd = getattr(cfg, wd_field) if wd_field else 0.0
        by_opt[opt_name].append(dict(params=[p for _, p in named], lr=lr, base_lr=lr,
                                     weight_decay=wd, name=group_name(named)))
    if by_opt["muon"]:
        opts.append(Muon(by_opt["muon"], lr=cfg.matrix_lr, momentum=cfg.momentum,
                         ns_steps=cfg.ns_steps, weight_decay=cfg.weight_decay, compiled=fused,
                         row_norm=cfg.muon_row_norm, coeffs=cfg.ns_coeffs))
    if by_opt["adam"]:  # decoupled weight decay per group (AdamW)
        opts.append(torch.optim.AdamW(by_opt["adam"], betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.adam_eps, fused=fused))
    return opts
