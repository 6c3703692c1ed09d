"""Which storage scheme each tensor gets: the name-pattern rules table, mixed-precision bits rules,
and `quantize_state`, which turns a whole state dict into (scheme, parts) per tensor.

The base table reproduces the challenge baseline (techniques.md 2.5): non-float tensors raw, small
control tensors fp32, other small floats fp16, large matrices quant.scheme, other large tensors
int8 with one scale. `quant.bits_rules` ("mlp=5,attn=6,tok_emb=8") then gives each large matrix the
scheme of the one pattern it matches (mixed precision, records (a)-(e)).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from loopgolf.compress.lqer import add_lqer
from loopgolf.compress.quant import QUANTIZERS, check_parts, dtype_name
from loopgolf.config import QuantConfig

MATRIX_SCHEME = "<quant.scheme>"  # placeholder in RULES, resolved to QuantConfig.scheme
# Substring match on the name, as the baseline's CONTROL_TENSOR_NAME_PATTERNS (which also lists the
# plurals attn_scales, mlp_scales, resid_mixes, skip_weights, all covered by a substring search).
CONTROL_PATTERN = r"attn_scale|mlp_scale|resid_mix|q_gain|skip_weight"


@dataclass(frozen=True)
class Rule:
    """One row of the rules table: conditions on (name, tensor) and the scheme it implies.

    A condition left at None/"" is not checked. `small` means numel <= passthrough_max_numel.
    """

    name: str
    scheme: str  # a QUANTIZERS key, or MATRIX_SCHEME
    pattern: str = ""  # re.search on the tensor name must match
    exclude: str = ""  # re.search on the tensor name must NOT match
    floating: bool | None = None
    small: bool | None = None
    ndim: int | None = None
    not_ndim: int | None = None

    def matches(self, name: str, t: torch.Tensor, qcfg: QuantConfig) -> bool:
        if self.floating is not None and t.is_floating_point() != self.floating:
            return False
        if self.small is not None and (t.numel() <= qcfg.passthrough_max_numel) != self.small:
            return False
        if self.ndim is not None and t.ndim != self.ndim:
            return False
        if self.not_ndim is not None and t.ndim == self.not_ndim:
            return False
        if self.pattern and not re.search(self.pattern, name):
            return False
        return not (self.exclude and re.search(self.exclude, name))


# Ordered for reading only: assign_schemes demands that exactly one rule matches each tensor.
RULES: tuple[Rule, ...] = (
    Rule("non_float", "raw", floating=False),
    Rule("control", "fp32", pattern=CONTROL_PATTERN, floating=True, small=True),
    Rule("small_float", "fp16", exclude=CONTROL_PATTERN, floating=True, small=True),
    Rule("matrix", MATRIX_SCHEME, floating=True, small=False, ndim=2),
    Rule("large_other", "int8_tensor", floating=True, small=False, not_ndim=2),
)


def parse_bits_rules(spec: str) -> list[tuple[str, str]]:
    """"mlp=5,attn=6,tok_emb=ternary_row" -> [(pattern, scheme)]; a number N means intN_row."""
    out: list[tuple[str, str]] = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        pattern, sep, value = item.partition("=")
        value = value.strip()
        scheme = f"int{value}_row" if value.isdigit() else value
        if not sep or not pattern.strip() or scheme not in QUANTIZERS:
            raise ValueError(f"quant.bits_rules item {item!r}: expected PATTERN=N (N in 2..8) or "
                             f"PATTERN=SCHEME with a scheme among {', '.join(sorted(QUANTIZERS))}")
        try:
            re.compile(pattern.strip())
        except re.error as e:
            raise ValueError(f"quant.bits_rules pattern {pattern!r} is not a regex ({e})") from None
        out.append((pattern.strip(), scheme))
    return out


def assign_schemes(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                   rules: tuple[Rule, ...] | list[Rule] = RULES) -> dict[str, str]:
    """Tensor name -> scheme; ValueError lists every tensor matched by zero or several rules.

    Tensors whose rule names MATRIX_SCHEME get quant.scheme, or, when quant.bits_rules is set, the
    scheme of the one bits rule whose pattern they match (re.search).
    """
    if qcfg.scheme not in QUANTIZERS:
        raise ValueError(f"quant.scheme={qcfg.scheme!r} is not a known scheme; "
                         f"choose one of {', '.join(sorted(QUANTIZERS))}")
    bits_rules = parse_bits_rules(qcfg.bits_rules)
    out: dict[str, str] = {}
    problems: list[str] = []
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name}: not a tensor ({type(t).__name__})")
            continue
        hits = [r for r in rules if r.matches(name, t, qcfg)]
        if len(hits) != 1:
            which = ", ".join(r.name for r in hits) if hits else "none"
            problems.append(f"{name} {dtype_name(t.dtype)}{list(t.shape)}: rules matched: {which}")
            continue
        scheme = qcfg.scheme if hits[0].scheme == MATRIX_SCHEME else hits[0].scheme
        if hits[0].scheme == MATRIX_SCHEME and bits_rules:
            bits_hits = [(pat, sch) for pat, sch in bits_rules if re.search(pat, name)]
            if len(bits_hits) != 1:
                which = ", ".join(pat for pat, _ in bits_hits) if bits_hits else "none"
                problems.append(f"{name}: quant.bits_rules patterns matched: {which}")
                continue
            scheme = bits_hits[0][1]
        if scheme not in QUANTIZERS:
            problems.append(f"{name}: rule {hits[0].name} names unknown scheme {scheme!r}")
            continue
        out[name] = scheme
    if problems:
        raise ValueError("every tensor must match exactly one quantization rule; "
                         + "; ".join(problems))
    return out


QTensor = tuple[str, dict[str, np.ndarray]]  # (scheme, parts): one tensor as the artifact stores it


def quantize_state(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                   precomputed: dict[str, QTensor] | None = None) -> dict[str, QTensor]:
    """Every tensor quantized per the rules; `precomputed` (e.g. GPTQ output) replaces the
    round-to-nearest result of the tensors it names and must use the scheme the rules assign."""
    schemes = assign_schemes(state, qcfg)
    precomputed = precomputed or {}
    unknown = sorted(set(precomputed) - set(state))
    if unknown:
        raise ValueError(f"precomputed parts for tensors not in the state: {unknown[:5]}")
    out: dict[str, QTensor] = {}
    for name in sorted(state):
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
            out[name] = (scheme, QUANTIZERS[scheme].quantize(t, qcfg))
        except ValueError as e:
            raise ValueError(f"tensor {name}: {e}") from None
    if qcfg.lqer_rank:
        out = add_lqer(out, state, qcfg.lqer_rank, qcfg)
    return out
