"""FP8 training matmuls for the blocks' linear layers (model.fp8; issue 15's "FP8 matmuls").

An H100/H200 multiplies float8 at twice the bf16 rate. `Fp8Linear` runs, in training mode, the
forward product and the input gradient through `torch._scaled_mm` in float8 e4m3 with row-wise
scales, and keeps the weight gradient in bf16:

    forward   y  = (x / sx)_8 (W / sw)_8ᵀ · sx swᵀ     sx = amax|x| per token / 448, sw = amax|W| per output row / 448
    backward  dx = (g / sg)_8 (W / sc)_8 · sg sc       sg = amax|g| per token / 448, sc = amax|W| per input column / 448
              dW = gᵀ x                                  bf16, as without FP8

(·)_8 is rounding to e4m3 (3 mantissa bits, largest 448), clamped so a rounding step above 448 never
becomes NaN. Row-wise scales follow each token's range, so no delayed amax history is needed
(torchao's "rowwise" float8 recipe; modded-nanogpt casts its lm_head the same way with fixed
scales). The weight gradient stays bf16 because an e4m3 product needs both operands transposed
into new copies there, which costs more memory traffic than it saves at d=512.

Only the training forward changes: in eval mode (calibration, the artifact's scoring) the layer is
the plain nn.Linear, so the weights, names, the artifact, GPTQ, QAT and LoRA hooks see an nn.Linear.
Layers whose widths are not multiples of 16 (a _scaled_mm requirement) stay bf16.

Measured, and why it is off everywhere: `baseline` (d=512) on one H200, torch 2.11, micro-batch 256,
`loopgolf profile`: 252.0 ms/step with model.fp8 against 239.8 without. The e4m3 products took
40.6 ms where their bf16 counterparts took 49.6 (1.22x, K = 512 is too thin for FP8's rate), and
the amax / scale / cast work inductor fused into the neighbouring kernels cost more than the
9 ms saved (bench/results/2026-12-02_proxy300_baseline_m256_vs_reference_h200/profiles). Wider
models (d >= 1024) are where it may pay; measure with `loopgolf profile --set model.fp8=true`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def _rowwise(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t quantized to e4m3 with one float32 scale per slice along `dim` (amax over `dim`)."""
    scale = t.abs().amax(dim=dim, keepdim=True).float().clamp_min(1e-12) / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class _Fp8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(out_dtype)
        x8, sx = _rowwise(x2, dim=1)  # (M, K), (M, 1)
        w8, sw = _rowwise(w, dim=1)  # (N, K), (N, 1)
        y = torch._scaled_mm(x8, w8.contiguous().t(), scale_a=sx, scale_b=sw.reshape(1, -1), out_dtype=out_dtype)
        ctx.save_for_backward(x2, w)
        ctx.out_dtype = out_dtype
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x2, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1]).to(ctx.out_dtype)
        g8, sg = _rowwise(g2, dim=1)  # (M, N), (M, 1)
        wc8, sc = _rowwise(w.t(), dim=1)  # (K, N) rows = input columns, (K, 1)
        # _scaled_mm wants its second operand column-major: wc8 (K, N) made row-major, read as (N, K)
        dx = torch._scaled_mm(g8, wc8.contiguous().t(), scale_a=sg, scale_b=sc.reshape(1, -1), out_dtype=ctx.out_dtype)
        dw = (g2.t() @ x2).to(w.dtype)
        return dx.reshape(*g.shape[:-1], x2.shape[1]), dw, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x Wᵀ with both training products in float8 (see the module docstring)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    with torch.autocast(x.device.type, enabled=False):
        return _Fp8Matmul.apply(x, weight, dtype)


class Fp8Linear(nn.Linear):
    """nn.Linear whose training forward multiplies in float8; eval mode is the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[:-1].numel() % 16:
            return F.linear(x, self.weight, self.bias)
        return fp8_linear(x, self.weight)


def fp8_capable(lin: nn.Module) -> bool:
    return (type(lin) is nn.Linear and lin.bias is None and lin.in_features % 16 == 0
            and lin.out_features % 16 == 0)


def convert_linears(root: nn.Module) -> list[str]:
    """Turn every bias-free nn.Linear under `root` with widths divisible by 16 into an Fp8Linear in
    place (the same Parameter objects); returns their names."""
    names = []
    for name, mod in root.named_modules():
        if fp8_capable(mod):
            mod.__class__ = Fp8Linear
            names.append(name)
    return names
