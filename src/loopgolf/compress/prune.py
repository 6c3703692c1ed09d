"""Selective +-1 pruning: zero the quantized +-1 values that sat closest to zero before rounding.

On a per-row grid most weights land on 0 or +-1; turning the least certain +-1 values into 0 lowers
the entropy the codec sees (fewer bytes) at the smallest added error, since those values had
|w|/scale just above 0.5. The budget fitter (compress/fit.py) tunes the fraction to land under a
byte target. The order is global over all row-grid tensors and fully deterministic: by |w|/scale,
ties by tensor name and then flat index.
"""
from __future__ import annotations

import numpy as np
import torch

from loopgolf.compress.quant import QUANTIZERS, RowGridQuantizer
from loopgolf.compress.rules import QTensor


def prune_ones(quantized: dict[str, QTensor], state: dict[str, torch.Tensor],
               frac: float) -> dict[str, QTensor]:
    """A copy of `quantized` with round(frac * #(+-1 values)) of them set to 0."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"prune fraction {frac} must be in [0, 1]")
    names = [n for n in sorted(quantized)
             if isinstance(QUANTIZERS[quantized[n][0]], RowGridQuantizer)]
    keys, where = [], []
    for n in names:
        parts = quantized[n][1]
        q, scale = parts["q"], parts["scale"].astype(np.float32)
        idx = np.flatnonzero(np.abs(q.reshape(-1)) == 1)
        w = state[n].detach().cpu().float().numpy().reshape(-1)[idx]
        rows = idx // q.shape[1]
        keys.append(np.abs(w) / np.maximum(scale[rows], np.float32(1e-30)))
        where.append(idx)
    total = sum(len(k) for k in keys)
    count = int(round(frac * total))
    out = dict(quantized)
    if count == 0:
        return out
    order = np.argsort(np.concatenate(keys), kind="stable")[:count]
    bounds = np.cumsum([0] + [len(k) for k in keys])
    for i, n in enumerate(names):
        sel = order[(order >= bounds[i]) & (order < bounds[i + 1])] - bounds[i]
        if len(sel):
            scheme, parts = quantized[n]
            q = parts["q"].copy()
            q.reshape(-1)[where[i][sel]] = 0
            out[n] = (scheme, {**parts, "q": q})
    return out
