"""Which storage scheme each tensor gets: the storage column of model/params.py's PARAM_KINDS,
resolved by size and shape, then `quant.bits_rules` for the matrices; and `quantize_state`, which
turns a whole state dict into (scheme, parts) per tensor.

The storage rules reproduce the challenge baseline (techniques.md 2.5): non-float tensors raw, small
control tensors fp32, other small floats fp16, large matrices quant.scheme, other large tensors
int8 with one scale. `quant.bits_rules` ("mlp=5,attn=6,tok_emb=8") then gives each large matrix the
scheme of the one pattern it matches (mixed precision, records (a)-(e)). Training-only kinds (MTP
heads) have storage "none": they get no scheme and never reach the artifact. `grid_quantizers` names
the tensors stored on a per-row grid; QAT fake-quantizes, GPTQ rounds and LQER corrects exactly those.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from loopgolf.compress.lqer import add_lqer
from loopgolf.compress.quant import QUANTIZERS, RowGridQuantizer, check_parts, dtype_name, scheme_list
from loopgolf.config import QuantConfig
from loopgolf.model.params import PARAM_KINDS, ParamKind, kinds_of

MATRIX_SCHEME = "<quant.scheme>"  # what storage "matrix" gives a large 2-D tensor


def storage_scheme(storage: str, t: torch.Tensor, qcfg: QuantConfig) -> str | None:
    """A PARAM_KINDS storage rule resolved for one tensor: a QUANTIZERS key, MATRIX_SCHEME, or None
    (storage "none": not shipped). Small = numel <= quant.passthrough_max_numel."""
    if storage == "none":
        return None
    if storage not in ("matrix", "control_fp32"):
        return storage
    if t.numel() <= qcfg.passthrough_max_numel:
        return "fp32" if storage == "control_fp32" else "fp16"
    return MATRIX_SCHEME if t.ndim == 2 else "int8_tensor"  # large controls: quantized (baseline)


def rule_scheme(value: str) -> str:
    """A bits-rule value as a scheme name: N -> intN_row, qL -> qL_row (+-L levels), else as is."""
    value = value.strip()
    if value.isdigit():
        return f"int{value}_row"
    if value[:1] == "q" and value[1:].isdigit():
        return f"{value}_row"
    return value


def parse_bits_rules(spec: str) -> list[tuple[str, str]]:
    """"mlp=5,attn=6,tok_emb=ternary_row" -> [(pattern, scheme)]; a number N means intN_row and qL
    the level grid qL_row (PR #1453's "mlp=q16" = +-16)."""
    out: list[tuple[str, str]] = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        pattern, sep, value = item.partition("=")
        scheme = rule_scheme(value)
        if not sep or not pattern.strip() or scheme not in QUANTIZERS:
            raise ValueError(f"quant.bits_rules item {item!r}: expected PATTERN=N (N in 2..8), "
                             f"PATTERN=qL (L in 1..127) or PATTERN=SCHEME with a scheme among "
                             f"{scheme_list()}")
        try:
            re.compile(pattern.strip())
        except re.error as e:
            raise ValueError(f"quant.bits_rules pattern {pattern!r} is not a regex ({e})") from None
        out.append((pattern.strip(), scheme))
    return out


def assign_schemes(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                   kinds: tuple[ParamKind, ...] = PARAM_KINDS) -> dict[str, str]:
    """Tensor name -> scheme, for every tensor that ships (training-only kinds are left out);
    ValueError lists every tensor matched by zero or several PARAM_KINDS rows or bits rules.

    Tensors whose storage resolves to MATRIX_SCHEME get quant.scheme, or, when quant.bits_rules is
    set, the scheme of the one bits rule whose pattern they match (re.search).
    """
    if qcfg.scheme not in QUANTIZERS:
        raise ValueError(f"quant.scheme={qcfg.scheme!r} is not a known scheme; "
                         f"choose one of {scheme_list()}")
    bits_rules = parse_bits_rules(qcfg.bits_rules)
    rows = kinds_of(sorted(state.items()), kinds)
    out: dict[str, str] = {}
    problems: list[str] = []
    for name in sorted(state):
        scheme = storage_scheme(rows[name].storage, state[name], qcfg)
        if scheme == MATRIX_SCHEME:
            scheme = qcfg.scheme
            if bits_rules:
                hits = [(pat, sch) for pat, sch in bits_rules if re.search(pat, name)]
                if len(hits) != 1:
                    which = ", ".join(pat for pat, _ in hits) if hits else "none"
                    problems.append(f"{name}: quant.bits_rules patterns matched: {which}")
                    continue
                scheme = hits[0][1]
        if scheme is None:
            continue
        if scheme not in QUANTIZERS:
            problems.append(f"{name}: row {rows[name].kind} names unknown scheme {scheme!r}")
            continue
        out[name] = scheme
    if problems:
        raise ValueError("every tensor must match exactly one quantization rule; "
                         + "; ".join(problems))
    return out


def grid_quantizers(state: dict[str, torch.Tensor], qcfg: QuantConfig
                    ) -> dict[str, RowGridQuantizer]:
    """The shipped tensors stored on a per-row grid (intN_row, ternary_row) and their quantizer."""
    return {n: q for n, s in assign_schemes(state, qcfg).items()
            if isinstance(q := QUANTIZERS[s], RowGridQuantizer)}


QTensor = tuple[str, dict[str, np.ndarray]]  # (scheme, parts): one tensor as the artifact stores it


def tensor_qcfg(name: str, t: torch.Tensor, qcfg: QuantConfig) -> QuantConfig:
    """The quant config one tensor is rounded with: quant.sdclip_k_embed > 0 replaces
    quant.sdclip_k for the PARAM_KINDS "embedding" tensors (#1493: k = 20 for the int8 embedding,
    12.85 for the int6 matrices); every other tensor gets `qcfg` itself."""
    if not qcfg.sdclip_k_embed or kinds_of([(name, t)])[name].kind != "embedding":
        return qcfg
    return dataclasses.replace(qcfg, sdclip_k=qcfg.sdclip_k_embed)


def quantize_state(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                   precomputed: dict[str, QTensor] | None = None) -> dict[str, QTensor]:
    """Every shipped tensor quantized per the rules; `precomputed` (e.g. GPTQ output) replaces the
    round-to-nearest result of the tensors it names and must use the scheme the rules assign."""
    schemes = assign_schemes(state, qcfg)
    precomputed = precomputed or {}
    unknown = sorted(set(precomputed) - set(schemes))
    if unknown:
        raise ValueError(f"precomputed parts for tensors not in the shipped state: {unknown[:5]}")
    out: dict[str, QTensor] = {}
    for name in sorted(schemes):
        t, scheme = state[name], schemes[name]
        if name in precomputed:
            pscheme, parts = precomputed[name]
            if pscheme != scheme:
                raise ValueError(f"tensor {name}: precomputed scheme {pscheme} but the rules assign "
                                 f"{scheme}; quantize with the same quant config")
            check_parts(scheme, parts, QUANTIZERS[scheme].part_spec(tuple(t.shape),
                                                                     dtype_name(t.dtype)))
            out[name] = (scheme, parts)
            continue
        try:
            out[name] = (scheme, QUANTIZERS[scheme].quantize(t, tensor_qcfg(name, t, qcfg)))
        except ValueError as e:
            raise ValueError(f"tensor {name}: {e}") from None
    if qcfg.lqer_rank:
        grid = {n for n, s in schemes.items() if isinstance(QUANTIZERS[s], RowGridQuantizer)}
        out = add_lqer(out, state, qcfg.lqer_rank, qcfg, grid)
    return out
