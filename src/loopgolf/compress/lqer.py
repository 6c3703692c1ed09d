"""LQER: a low-rank correction of each matrix's quantization error, shipped as two small factors.

For a row-grid matrix W with dequantized grid weights Q, the error E = W - Q is approximated by its
top-r singular directions, E ~ A B with A = U_r S_r (rows x r) and B = V_r^T (r x cols); the
artifact stores A and B as tensors named `<W>.lqer_a` / `<W>.lqer_b` next to W's grid, and
unpacking folds W = Q + A B back into one tensor, so loaders and models never see the factors
(top record, techniques.md 4e: LQER on the quantization residual). With GPTQ the residual is taken
against GPTQ's grid. quant.lqer_rank = 0 turns it off. The factors are stored either
  - fp16 (quant.lqer_asym_group = 0): (rows + cols) x r x 2 bytes per matrix; or
  - #1855's asymmetric form (train_gpt.py L2206-2217 `_lqer_pack_asym`, L2330-2340 unpacking;
    quant.lqer_asym_group = g, #1855: 64, #2135: 32): A as int2 codes in [-2, 1] with one fp16
    scale s_A = max|A| / 1.5 per matrix ("lqer_int2_tensor"), B as int4 codes in [-8, 7] with one
    fp16 scale s_g = max|B_g| / 7.5 per group of g consecutive entries of the flattened B
    ("lqer_int4_g{g}"); codes = clamp(round(x / s)), so every entry is off by at most s / 2. A matrix
    whose B size is not a multiple of g keeps fp16 factors (#1855 falls back to symmetric intN).
quant.lqer_top_k = k corrects only the k matrices of largest ||E||_F (#1855: 3); 0 = all of them.
The two integer factor schemes are registered in compress/quant.py's QUANTIZERS table on import (the
artifact writer, header check and reader look schemes up there; this module is imported by both).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from loopgolf.compress.quant import QUANTIZERS, Quantizer, RowGridQuantizer, Spec, dtype_name

SUFFIX_A, SUFFIX_B = ".lqer_a", ".lqer_b"
LQER_GROUPS = (16, 32, 64, 128)  # quant.lqer_asym_group choices (one registered scheme each)


def _fp16_scale(amax: torch.Tensor, levels: float) -> torch.Tensor:
    """amax / levels as fp16; a zero (or fp16-underflowing) scale becomes 1, whose codes are 0 anyway."""
    s = (amax / levels).to(torch.float16)
    return torch.where(s > 0, s, torch.ones_like(s))


class Int2TensorFactor(Quantizer):
    """LQER's A factor in #1855's asymmetric form: int2 codes in [-2, 1], one fp16 scale max|A|/1.5."""

    name = "lqer_int2_tensor"

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        return {"q": ("int8", tuple(shape)), "scale": ("float16", ())}

    def quantize(self, t: torch.Tensor, qcfg) -> dict[str, np.ndarray]:
        a = t.detach().cpu().float()
        s = _fp16_scale(a.abs().max(), 1.5)
        q = torch.clamp(torch.round(a / s.float()), -2, 1).to(torch.int8)
        return {"q": q.contiguous().numpy(), "scale": s.numpy()}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        return torch.from_numpy(parts["q"].copy()).float() * float(parts["scale"])


class Int4GroupFactor(Quantizer):
    """LQER's B factor in #1855's asymmetric form: int4 codes in [-8, 7], one fp16 scale
    max|B_g|/7.5 per group of `group` consecutive entries of the flattened factor."""

    def __init__(self, group: int) -> None:
        self.group, self.name = group, f"lqer_int4_g{group}"

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        n = math.prod(shape)
        if n % self.group:
            raise ValueError(f"scheme {self.name} needs a size divisible by {self.group}, got {list(shape)}")
        return {"q": ("int8", tuple(shape)), "scale": ("float16", (n // self.group,))}

    def quantize(self, t: torch.Tensor, qcfg) -> dict[str, np.ndarray]:
        self.part_spec(tuple(t.shape), "float32")
        b = t.detach().cpu().float().reshape(-1, self.group)
        s = _fp16_scale(b.abs().amax(dim=1), 7.5)
        q = torch.clamp(torch.round(b / s.float()[:, None]), -8, 7).to(torch.int8).reshape(t.shape)
        return {"q": q.contiguous().numpy(), "scale": s.contiguous().numpy()}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        q = torch.from_numpy(parts["q"].copy()).float().reshape(-1, self.group)
        return (q * torch.from_numpy(parts["scale"].copy()).float()[:, None]).reshape(shape)


LQER_SCHEMES: dict[str, Quantizer] = {"lqer_int2_tensor": Int2TensorFactor(),
                                      **{f"lqer_int4_g{g}": Int4GroupFactor(g) for g in LQER_GROUPS}}
QUANTIZERS.update(LQER_SCHEMES)


def factor_schemes(b_numel: int, group: int) -> tuple[str, str]:
    """(scheme of A, scheme of B) for quant.lqer_asym_group = group (0 = fp16)."""
    if group and b_numel % group == 0:
        return "lqer_int2_tensor", f"lqer_int4_g{group}"
    return "fp16", "fp16"


def is_factor(name: str) -> bool:
    return name.endswith((SUFFIX_A, SUFFIX_B))


def add_lqer(quantized: dict, state: dict[str, torch.Tensor], rank: int, qcfg,
             grid: set[str]) -> dict:
    """`quantized` plus the factors of the matrices in `grid` (the row-grid tensors, from
    compress/rules.py grid_quantizers) with both sides > rank: all of them, or the
    quant.lqer_top_k of largest ||W - Q||_F; stored as quant.lqer_asym_group says (module docstring)."""
    out = dict(quantized)
    errors = {}
    for name in sorted(grid & set(quantized)):
        scheme, parts = quantized[name]
        t = state.get(name)
        if t is None or t.ndim != 2 or min(t.shape) <= rank:
            continue
        if not isinstance(QUANTIZERS[scheme], RowGridQuantizer):
            raise ValueError(f"LQER: {name} is stored as {scheme}, not on a row grid")
        w = t.detach().cpu().float()
        errors[name] = w - QUANTIZERS[scheme].dequantize(parts, tuple(t.shape), dtype_name(t.dtype))
    top_k = getattr(qcfg, "lqer_top_k", 0)
    chosen = sorted(errors, key=lambda n: (-float(errors[n].norm()), n))[:top_k] if top_k else sorted(errors)
    for name in sorted(chosen):
        a, b = low_rank(errors[name], rank)
        scheme_a, scheme_b = factor_schemes(b.numel(), getattr(qcfg, "lqer_asym_group", 0))
        out[name + SUFFIX_A] = (scheme_a, QUANTIZERS[scheme_a].quantize(a, qcfg))
        out[name + SUFFIX_B] = (scheme_b, QUANTIZERS[scheme_b].quantize(b, qcfg))
    return out


def low_rank(err: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) = (U_r S_r, V_r^T): the best rank-r approximation A B of `err` (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(err, full_matrices=False)
    return (u[:, :rank] * s[:rank]).contiguous(), vh[:rank].contiguous()


def factor_shape(name: str, parts: dict) -> tuple[tuple[int, ...], str]:
    """Header shape/dtype of a factor (it has no entry in the model's state)."""
    if not is_factor(name) or not (len(parts) == 1 or "q" in parts):
        raise KeyError(f"no shape for tensor {name!r}")
    arr = parts["q"] if "q" in parts else next(iter(parts.values()))
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
