"""LQER: a low-rank correction of each matrix's quantization error, shipped as two fp16 factors.

For a row-grid matrix W with dequantized grid weights Q, the error E = W - Q is approximated by its
top-r singular directions, E ~ A B with A = U_r S_r (rows x r) and B = V_r^T (r x cols); the
artifact stores A and B as fp16 tensors named `<W>.lqer_a` / `<W>.lqer_b` next to W's grid, and
unpacking folds W = Q + A B back into one tensor, so loaders and models never see the factors
(top record, techniques.md 4e: LQER on the quantization residual). Costs (rows + cols) x r x 2 bytes
per matrix; quant.lqer_rank = 0 turns it off. With GPTQ the residual is taken against GPTQ's grid.
"""
from __future__ import annotations

import torch

from loopgolf.compress.quant import QUANTIZERS, RowGridQuantizer, dtype_name

SUFFIX_A, SUFFIX_B = ".lqer_a", ".lqer_b"


def is_factor(name: str) -> bool:
    return name.endswith((SUFFIX_A, SUFFIX_B))


def add_lqer(quantized: dict, state: dict[str, torch.Tensor], rank: int, qcfg,
             grid: set[str]) -> dict:
    """`quantized` plus the fp16 factors of every matrix in `grid` (the row-grid tensors, from
    compress/rules.py grid_quantizers) with both sides > rank."""
    out = dict(quantized)
    for name in sorted(grid & set(quantized)):
        scheme, parts = quantized[name]
        t = state.get(name)
        if t is None or t.ndim != 2 or min(t.shape) <= rank:
            continue
        if not isinstance(QUANTIZERS[scheme], RowGridQuantizer):
            raise ValueError(f"LQER: {name} is stored as {scheme}, not on a row grid")
        w = t.detach().cpu().float()
        err = w - QUANTIZERS[scheme].dequantize(parts, tuple(t.shape), dtype_name(t.dtype))
        u, s, vh = torch.linalg.svd(err, full_matrices=False)
        a, b = (u[:, :rank] * s[:rank]).contiguous(), vh[:rank].contiguous()
        out[name + SUFFIX_A] = ("fp16", QUANTIZERS["fp16"].quantize(a, qcfg))
        out[name + SUFFIX_B] = ("fp16", QUANTIZERS["fp16"].quantize(b, qcfg))
    return out


def factor_shape(name: str, parts: dict) -> tuple[tuple[int, ...], str]:
    """Header shape/dtype of a factor (it has no entry in the model's state)."""
    if not is_factor(name) or len(parts) != 1:
        raise KeyError(f"no shape for tensor {name!r}")
    (arr,) = parts.values()
    return tuple(arr.shape), "float32"


def fold_lqer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add each matrix's A B to it and drop the factors; a lone or mis-shaped factor is an error."""
    out = {n: t for n, t in state.items() if not is_factor(n)}
    for name in sorted(n for n in state if n.endswith(SUFFIX_A)):
        base = name[: -len(SUFFIX_A)]
        b = state.get(base + SUFFIX_B)
        a = state[name]
        if base not in out or b is None or a.ndim != 2 or b.ndim != 2 or \
                (a.shape[0], b.shape[1]) != tuple(out[base].shape) or a.shape[1] != b.shape[0]:
            raise ValueError(f"LQER factors of {base!r} do not match the tensor")
        w = out[base]
        out[base] = (w.float() + a.float() @ b.float()).to(w.dtype)
    lone = [n for n in state if n.endswith(SUFFIX_B) and n[: -len(SUFFIX_B)] + SUFFIX_A not in state]
    if lone:
        raise ValueError(f"LQER factor without its pair: {lone[0]!r}")
    return out
