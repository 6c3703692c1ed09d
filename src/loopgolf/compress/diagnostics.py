"""Quantization diagnostics: per-tensor error before vs after quantization, and the bpb gap.

The gap that matters is post-quantization minus pre-quantization val_bpb (the issue's acceptance:
<= 0.010 at the default loop count). With depth recurrence a shared weight's error is applied on
every loop, so the per-tensor report lists relative errors to find the tensors worth more bits, and
`bpb_gap` takes any eval function, e.g. one that runs the model at several loop counts.
`progress` wraps the long compression loops (GPTQ, budget-fit trials) in a tqdm bar when stderr is
a terminal, and is the plain iterable otherwise (logs and CI stay free of bar redraws).
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn

from loopgolf.compress.quant import QUANTIZERS, dtype_name
from loopgolf.compress.rules import QTensor, quantize_state
from loopgolf.config import QuantConfig

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T] | Iterable[T]:
    """`items` with a tqdm bar on stderr when it is a TTY (results unchanged), else `items`."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm  # only needed for interactive runs

    return tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)


def dequantized_state(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                      precomputed: dict[str, QTensor] | None = None) -> dict[str, torch.Tensor]:
    """What the artifact would give back for `state` (without compressing anything)."""
    out = {}
    for name, (scheme, parts) in quantize_state(state, qcfg, precomputed).items():
        t = state[name]
        out[name] = QUANTIZERS[scheme].dequantize(parts, tuple(t.shape), dtype_name(t.dtype))
    return out


def quant_error_report(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                       precomputed: dict[str, QTensor] | None = None) -> list[dict]:
    """Per tensor: scheme, numel, relative RMS error ||w - w_q|| / ||w||, max |w - w_q|; largest
    relative error first."""
    schemes = {n: s for n, (s, _) in quantize_state(state, qcfg, precomputed).items()}
    deq = dequantized_state(state, qcfg, precomputed)
    rows = []
    for name in sorted(schemes):
        t = state[name]
        if not t.is_floating_point():
            continue
        w = t.detach().cpu().float()
        err = deq[name].float() - w
        norm = float(w.norm())
        rows.append({"name": name, "scheme": schemes[name], "numel": w.numel(),
                     "rel_rmse": float(err.norm()) / norm if norm > 0 else 0.0,
                     "max_abs_err": float(err.abs().max()) if w.numel() else 0.0})
    return sorted(rows, key=lambda r: (-r["rel_rmse"], r["name"]))


def format_error_report(rows: list[dict], top: int = 20) -> str:
    lines = [f"{'tensor':<40}{'scheme':>12}{'numel':>12}{'rel_rmse':>12}{'max_err':>12}"]
    for r in rows[:top]:
        lines.append(f"{r['name']:<40}{r['scheme']:>12}{r['numel']:>12,}{r['rel_rmse']:>12.5f}"
                     f"{r['max_abs_err']:>12.5f}")
    return "\n".join(lines)


def bpb_gap(model: nn.Module, qcfg: QuantConfig, eval_fn: Callable[[nn.Module], dict],
            precomputed: dict[str, QTensor] | None = None) -> dict:
    """{pre, post, gap} val_bpb of `model` and of a copy carrying its quantized weights;
    `eval_fn(model) -> {"val_bpb": ...}` (e.g. evaluate_bpb with the val tokens bound)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pre = float(eval_fn(model)["val_bpb"])
    quantized = copy.deepcopy(model)
    deq = dequantized_state(state, qcfg, precomputed)
    # training-only tensors (not shipped, so not quantized) keep their values
    quantized.load_state_dict(state | {k: v.to(state[k].dtype) for k, v in deq.items()})
    post = float(eval_fn(quantized)["val_bpb"])
    return {"pre": pre, "post": post, "gap": post - pre}
