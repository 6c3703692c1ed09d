"""Muon for the matrices, AdamW for embeddings, head and control tensors, as model/params.py says
(or, optim.kind=adamw, one AdamW over every parameter: PR #29).

Each parameter's optimizer, learning-rate field and weight-decay field come from its PARAM_KINDS
row (`kinds_of` asserts exactly one row per parameter, so a new tensor without a row fails loudly).
Parameters that share (optimizer, lr field, wd field) form one param group, named after their kinds.
Muon follows the baseline (techniques.md 2.2): Nesterov momentum, a 5-step Newton-Schulz
orthogonalization with coefficients (3.4445, -4.7750, 2.0315) in bf16 after Frobenius normalization,
update scaled by sqrt(max(1, rows/cols)). A 3-D parameter (a stack such as LoRA's
(n_virtual, rows, cols)) is orthogonalized matrix by matrix, with the scale of its last two dims.
A parameter whose rows are several matrices stored together says so with a `muon_row_blocks`
attribute set at construction (SwiGLU's fused gate|up weight: 2): each block of rows is then
orthogonalized and scaled as its own matrix, as the published code with separate Linears does.

Sharded Muon (world > 1, as modded-nanogpt and the records do): momentum stays replicated (every
rank keeps every buffer, so checkpoints are the same as one process's), but Newton-Schulz, the
expensive part, runs on each rank only for its share of the matrices (`shard_matrices`: largest
first to the least-loaded rank, by NS FLOPs), and one all-gather (dist.all_gather_flat) hands every
rank every orthogonalized update. Each matrix's update is computed by the same function as on one
process, so the step is the same up to float reduction order of the batched matmuls.
"""
from __future__ import annotations

import torch
from torch import nn

from loopgolf import dist
from loopgolf.config import ModelConfig, OptimConfig
from loopgolf.model.params import kinds_of

GroupKey = tuple[str, str, str]  # (optimizer, lr field, wd field)


ADAM_SCALAR: GroupKey = ("adam", "scalar_lr", "adam_weight_decay")


def assign_groups(model: nn.Module, tie_embeddings: bool = True, to_scalar_adam: frozenset[str] = frozenset()
                  ) -> dict[GroupKey, list[tuple[str, nn.Parameter]]]:
    """(optimizer, lr field, wd field) -> the parameters it trains, in named_parameters order
    (shared, looped blocks appear once); ValueError if a parameter has no PARAM_KINDS row or
    several, or its row says it is not trained. Kinds named in `to_scalar_adam` go to the scalar
    AdamW group instead of their row's (optim.feature_proj_adam: PR #1290 L1882-1886)."""
    named = list(model.named_parameters())
    kinds = kinds_of(named)
    groups: dict[GroupKey, list[tuple[str, nn.Parameter]]] = {}
    untrained = [n for n, _ in named if kinds[n].optimizer == "none"]
    if untrained:
        raise ValueError(f"parameters whose PARAM_KINDS row trains nothing: {untrained[:5]}")
    for name, p in named:
        k = kinds[name]
        key = ADAM_SCALAR if k.kind in to_scalar_adam else (k.optimizer, k.lr_field(tie_embeddings), k.wd)
        groups.setdefault(key, []).append((name, p))
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


def ns_dtype(g: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if g.is_cuda else torch.float32


def newton_schulz5(g: torch.Tensor, steps: int, eps: float = 1e-7,
                   coeffs: tuple = STANDARD_NS) -> torch.Tensor:
    """Approximate orthogonalization of each matrix in g (..., rows, cols): bf16 on CUDA (tensor
    cores), float32 elsewhere (CPUs emulate bf16 matmuls: 12x slower measured on 2 cores)."""
    x = g.to(ns_dtype(g))
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


def ns_flops(rows: int, cols: int, steps: int) -> int:
    """Multiply-adds x2 of `steps` Newton-Schulz iterations on one (rows, cols) matrix:
    A = X X^T (2 m^2 n), A @ A (2 m^3), B @ X (2 m^2 n), with m = min, n = max."""
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m ** 3)


def shard_matrices(costs: list[int], world: int) -> list[int]:
    """The rank that orthogonalizes each matrix: the costliest first, each to the least-loaded rank
    (ties: the lowest rank; equal costs therefore go round-robin). Deterministic, so every rank
    computes the same table; with fewer matrices than ranks some ranks own none."""
    load = [0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda w: (load[w], w))
        owner[i] = r
        load[r] += costs[i]
    return owner


def row_blocks(p: torch.Tensor) -> int:
    """How many matrices the rows of p hold (module docstring); 1 unless its module said otherwise."""
    blocks = getattr(p, "muon_row_blocks", 1)
    if blocks != 1 and (p.ndim < 2 or p.shape[-2] % blocks):
        raise ValueError(f"muon_row_blocks={blocks} does not divide the rows of a {tuple(p.shape)} parameter")
    return blocks


class Muon(torch.optim.Optimizer):
    """Muon with Nesterov momentum. Parameters of one shape are orthogonalized together in one
    batched Newton-Schulz call: a few large kernels instead of thousands of tiny launches. A 3-D
    parameter is a stack of matrices, each orthogonalized on its own (NS works on the last two dims).
    With world > 1 each rank orthogonalizes its share (module docstring) and all-gathers the rest."""

    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, compiled: bool = False, row_norm: bool = False,
                 coeffs: str = "standard", rank: int = 0, world: int = 1):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov,
                                      weight_decay=weight_decay))
        self._ns = _ns_fn(compiled)
        self.row_norm = row_norm  # MuonEq-R: unit-L2 rows before Newton-Schulz (record (b) L347)
        self.coeffs = NS_COEFFS[coeffs]
        self.rank, self.world = rank, world
        self._plans: dict[tuple, list[list[list[int]]]] = {}  # stack shapes -> [rank][stack] -> matrices

    def _orthogonalize(self, g: torch.Tensor, steps: int) -> torch.Tensor:
        if self.row_norm:
            g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-7)
        return self._ns(g, steps, coeffs=self.coeffs)

    def _orthogonalize_sharded(self, work: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Each (stack, ns_steps) of `work` orthogonalized matrix by matrix: this rank's matrices
        here, everyone else's from one all-gather of the flat results."""
        mats = [g.reshape(-1, *g.shape[-2:]) for g, _ in work]  # (matrices, rows, cols) per stack
        key = tuple((tuple(m.shape), steps) for m, (_, steps) in zip(mats, work))
        if key not in self._plans:
            units = [(k, j) for k, m in enumerate(mats) for j in range(m.size(0))]
            owner = shard_matrices([ns_flops(*mats[k].shape[-2:], work[k][1]) for k, _ in units], self.world)
            owned = [[[] for _ in mats] for _ in range(self.world)]
            for (k, j), r in zip(units, owner):
                owned[r][k].append(j)
            self._plans[key] = owned
        owned = self._plans[key]  # owned[rank][stack] = that rank's matrix indices in the stack
        mine = [self._orthogonalize(m[idx], steps).reshape(-1)
                for m, (_, steps), idx in zip(mats, work, owned[self.rank]) if idx]
        sizes = [sum(len(idx) * m[0].numel() for m, idx in zip(mats, owned[r])) for r in range(self.world)]
        dtype = ns_dtype(mats[0])
        send = torch.zeros(max(sizes), dtype=dtype, device=mats[0].device)
        if mine:
            send[: sizes[self.rank]] = torch.cat(mine)
        gathered = dist.all_gather_flat(send)
        outs = [torch.empty(m.shape, dtype=dtype, device=m.device) for m in mats]
        for r in range(self.world):
            offset = 0
            for m, out, idx in zip(mats, outs, owned[r]):
                n = len(idx) * m[0].numel()
                if n:
                    out[idx] = gathered[r, offset:offset + n].view(len(idx), *m.shape[-2:])
                offset += n
        return [out.view(g.shape) for out, (g, _) in zip(outs, work)]

    @torch.no_grad()
    def step(self, closure=None):
        todo = []  # (group, shape, params, stacked update); the same order on every rank
        for group in self.param_groups:
            mom = group["momentum"]
            by_shape: dict[tuple[tuple, int], list[torch.Tensor]] = {}  # (shape, row blocks)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((tuple(p.shape), row_blocks(p)), []).append(p)
            for (shape, blocks), ps in by_shape.items():
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
                if blocks > 1:  # (n, R, C) -> (n, blocks, R / blocks, C): each block its own matrix
                    g = g.view(len(ps), *shape[:-2], blocks, shape[-2] // blocks, shape[-1])
                if self.world == 1:  # one process: orthogonalize and apply shape by shape
                    self._apply(group, shape, ps, self._orthogonalize(g, group["ns_steps"]))
                else:
                    todo.append((group, shape, ps, g))
        if todo:
            orthos = self._orthogonalize_sharded([(g, group["ns_steps"]) for group, _, _, g in todo])
            for (group, shape, ps, _), ortho in zip(todo, orthos):
                self._apply(group, shape, ps, ortho)

    @staticmethod
    def _apply(group: dict, shape: tuple, ps: list[torch.Tensor], ortho: torch.Tensor) -> None:
        lr = group["lr"]
        scale = max(1.0, ortho.shape[-2] / ortho.shape[-1]) ** 0.5  # of one matrix (a row block)
        ortho = ortho.reshape(len(ps), *shape)
        if group["weight_decay"]:
            torch._foreach_mul_(ps, 1 - lr * group["weight_decay"])
        torch._foreach_add_(ps, [u.to(p.dtype) for u, p in zip(ortho.unbind(0), ps)], alpha=-lr * scale)


def build_optimizers(model: nn.Module, cfg: OptimConfig, mcfg: ModelConfig,
                     fused: bool = False) -> list[torch.optim.Optimizer]:
    """One Muon and one AdamW, each with a param group per (lr field, wd field) of the table.
    fused=True (CUDA): fused Adam and a compiled Newton-Schulz. Under torchrun Muon is sharded
    over the ranks (dist.info())."""
    if cfg.kind == "adamw":
        return [single_adamw(model, cfg, fused)]
    groups = assign_groups(model, mcfg.tie_embeddings,
                           frozenset({"feature_matrix"}) if cfg.feature_proj_adam else frozenset())
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
                         row_norm=cfg.muon_row_norm, coeffs=cfg.ns_coeffs,
                         rank=dist.info().rank, world=dist.info().world_size))
    if by_opt["adam"]:  # decoupled weight decay per group (AdamW)
        opts.append(torch.optim.AdamW(by_opt["adam"], betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.adam_eps, fused=fused))
    return opts


def single_adamw(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """optim.kind=adamw (PR #29 L422-430): one AdamW over every parameter, as
    AdamW(model.parameters(), lr, betas, weight_decay): base LR optim.adamw_lr (PR: 3e-3), decoupled
    weight decay optim.adam_weight_decay on every tensor, embedding and norms included (PR: 0.1),
    betas (optim.beta1, optim.beta2) (PR: 0.9, 0.95), eps optim.adam_eps (PR: torch's 1e-8). The
    table's rows still have to match (assign_groups checks them); their LR fields are not read."""
    params = [p for _, p in model.named_parameters()]
    group = dict(params=params, lr=cfg.adamw_lr, base_lr=cfg.adamw_lr, weight_decay=cfg.adam_weight_decay,
                 name="all")
    return torch.optim.AdamW([group], betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)
