"""Per-tensor storage schemes for the artifact, and the name-pattern rules that pick one per tensor.

The first scheme set reproduces the challenge baseline's int8 export (per-row path: baseline
L321-334): non-float tensors pass through untouched; float tensors of <= 65,536 elements are kept
(fp32 for the control tensors such as `q_gain` and `resid_mix`, fp16 otherwise); larger matrices
get per-row int8 with fp16 scales clipped at the 99.99984th percentile of |w|; other large tensors
get a single fp32 scale. Per-row intN (N = 2..8, int8 container) is there for lower bit widths.

Each quantizer turns a tensor into named numpy parts (the artifact stores raw bytes, never pickles)
and back into float32. Quantization always runs on CPU so that identical weights give identical
bytes whatever device they were trained on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from loopgolf.config import QuantConfig

MATRIX_SCHEME = "<quant.scheme>"  # placeholder in RULES, resolved to QuantConfig.scheme
# Substring match on the name, as the baseline's CONTROL_TENSOR_NAME_PATTERNS (which also lists the
# plurals attn_scales, mlp_scales, resid_mixes, skip_weights, all covered by a substring search).
CONTROL_PATTERN = r"attn_scale|mlp_scale|resid_mix|q_gain|skip_weight"

_QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses larger inputs
_FP16_MIN_NORMAL = 2.0 ** -14  # below it fp16 scales lose precision (subnormals) or flush to 0
_FP16_MAX = 65504.0

Spec = dict[str, tuple[str, tuple[int, ...]]]  # part name -> (numpy dtype name, shape)


def _build_dtype_table() -> dict[str, tuple[torch.dtype, str]]:
    """torch dtype name -> (torch dtype, numpy container storing it bit-exactly)."""
    table: dict[str, tuple[torch.dtype, str]] = {}
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32",
                 "float64", "uint16", "uint32", "uint64"):
        if hasattr(torch, name):
            table[name] = (getattr(torch, name), name)
    table["bfloat16"] = (torch.bfloat16, "int16")  # numpy has no bfloat16: store the bit pattern
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            table[name] = (getattr(torch, name), "uint8")
    return table


TORCH_DTYPES = _build_dtype_table()
PART_DTYPES = frozenset(container for _, container in TORCH_DTYPES.values())
_TORCH_OF_CONTAINER = {name: dt for name, (dt, _) in TORCH_DTYPES.items() if name in PART_DTYPES}


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def _to_numpy(t: torch.Tensor, container: str) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if dtype_name(t.dtype) != container:
        t = t.view(_TORCH_OF_CONTAINER[container])
    return t.numpy()


def _to_torch(a: np.ndarray) -> torch.Tensor:
    if not (a.flags.writeable and a.flags.c_contiguous and a.dtype.isnative):
        a = a.astype(a.dtype.newbyteorder("="), order="C", copy=True)
    return torch.from_numpy(a)


def _float32_cpu(t: torch.Tensor, scheme: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise ValueError(f"scheme {scheme} needs a float tensor, got {dtype_name(t.dtype)}")
    w = t.detach().cpu().float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"scheme {scheme} cannot quantize a tensor holding NaN or inf")
    return w


def _quantile_sorted(a: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(a, q, dim=-1) (linear interpolation) for inputs too large for torch."""
    s = a.sort(dim=-1).values
    rank = torch.tensor(q, dtype=s.dtype) * (s.shape[-1] - 1)
    below, above = rank.long(), rank.ceil().long()
    return s[..., below].lerp(s[..., above], rank - below)


def row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile of a 2-D tensor, bit-identical to torch.quantile(a, q, dim=1)."""
    rows, cols = a.shape
    if rows == 0 or cols == 0:
        return torch.zeros(rows, dtype=a.dtype)
    if cols > _QUANTILE_MAX_NUMEL:
        return _quantile_sorted(a, q)
    step = _QUANTILE_MAX_NUMEL // cols  # row blocks are independent, so chunking changes nothing
    return torch.cat([torch.quantile(a[i:i + step], q, dim=1) for i in range(0, rows, step)])


def flat_quantile(a: torch.Tensor, q: float) -> float:
    a = a.flatten()
    if a.numel() == 0:
        return 0.0
    if a.numel() > _QUANTILE_MAX_NUMEL:
        return float(_quantile_sorted(a, q).item())
    return float(torch.quantile(a, q).item())


def _check_parts(scheme: str, parts: dict[str, np.ndarray], spec: Spec) -> None:
    if set(parts) != set(spec):
        raise ValueError(f"scheme {scheme} expects parts {sorted(spec)}, got {sorted(parts)}")
    for pname, (dt, shape) in spec.items():
        a = parts[pname]
        if not isinstance(a, np.ndarray) or a.dtype.name != dt or tuple(a.shape) != shape:
            got = (a.dtype.name, tuple(a.shape)) if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"scheme {scheme} part {pname!r} must be {dt}{list(shape)}, got {got}")


class Quantizer:
    """Interface: quantize(t, qcfg) -> named parts; dequantize(parts, shape) -> float32 tensor."""

    name = "?"

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        """The parts (dtype, shape) that `quantize` produces for a tensor of this shape/dtype."""
        raise NotImplementedError

    def quantize(self, t: torch.Tensor, qcfg: QuantConfig) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                   dtype: str = "float32") -> torch.Tensor:
        """`dtype` is the original dtype; only "raw" uses it (float schemes give float32)."""
        shape = tuple(shape)
        _check_parts(self.name, parts, self.part_spec(shape, dtype))
        return self._dequantize(parts, shape, dtype)

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                    dtype: str) -> torch.Tensor:
        raise NotImplementedError


class RawQuantizer(Quantizer):
    """Exact passthrough of any supported dtype (bit patterns for types numpy lacks)."""

    name = "raw"

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"scheme raw cannot store dtype {dtype!r}")
        return {"data": (TORCH_DTYPES[dtype][1], tuple(shape))}

    def quantize(self, t: torch.Tensor, qcfg: QuantConfig) -> dict[str, np.ndarray]:
        spec = self.part_spec(tuple(t.shape), dtype_name(t.dtype))
        return {"data": _to_numpy(t, spec["data"][0])}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                    dtype: str) -> torch.Tensor:
        return _to_torch(parts["data"]).view(TORCH_DTYPES[dtype][0]).reshape(shape)


class CastQuantizer(Quantizer):
    """Float tensor stored as fp32 or fp16 (round to nearest even)."""

    def __init__(self, name: str, store: torch.dtype) -> None:
        self.name = name
        self.store = store

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        return {"data": (dtype_name(self.store), tuple(shape))}

    def quantize(self, t: torch.Tensor, qcfg: QuantConfig) -> dict[str, np.ndarray]:
        if not t.is_floating_point():
            raise ValueError(f"scheme {self.name} needs a float tensor, got {dtype_name(t.dtype)}")
        return {"data": t.detach().cpu().to(self.store).contiguous().numpy()}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                    dtype: str) -> torch.Tensor:
        return _to_torch(parts["data"]).float()


class IntRowQuantizer(Quantizer):
    """Symmetric per-row intN of a matrix: int8 container q, one fp16 scale per row.

    clip = quantile(|w_row|, clip_percentile), scale = max(clip / qmax, row_scale_min) computed in
    fp32 (q is rounded with the fp32 scale and the scale is then stored as fp16, as the baseline
    does), q = round(clamp(w, -clip, clip) / scale) in [-qmax, qmax].
    """

    def __init__(self, bits: int) -> None:
        if not 2 <= bits <= 8:
            raise ValueError(f"per-row intN supports N in 2..8, got {bits}")
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        self.name = f"int{bits}_row"

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        if len(shape) != 2:
            raise ValueError(f"scheme {self.name} needs a 2-D tensor, got shape {list(shape)}")
        return {"q": ("int8", tuple(shape)), "scale": ("float16", (shape[0],))}

    def quantize(self, t: torch.Tensor, qcfg: QuantConfig) -> dict[str, np.ndarray]:
        w = _float32_cpu(t, self.name)
        self.part_spec(tuple(w.shape), "float32")
        clip = row_quantile(w.abs(), qcfg.clip_percentile / 100.0)
        floor = max(qcfg.row_scale_min, _FP16_MIN_NORMAL)
        scale = (clip / self.qmax).clamp(min=floor, max=_FP16_MAX)
        clipped = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
        q = torch.clamp(torch.round(clipped / scale[:, None]), -self.qmax, self.qmax)
        return {"q": q.to(torch.int8).contiguous().numpy(),
                "scale": scale.to(torch.float16).contiguous().numpy()}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                    dtype: str) -> torch.Tensor:
        return _to_torch(parts["q"]).float() * _to_torch(parts["scale"]).float()[:, None]


class Int8TensorQuantizer(Quantizer):
    """int8 with one fp32 scale for the whole tensor (baseline: large non-matrix tensors)."""

    name = "int8_tensor"
    qmax = 127

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        return {"q": ("int8", tuple(shape)), "scale": ("float32", ())}

    def quantize(self, t: torch.Tensor, qcfg: QuantConfig) -> dict[str, np.ndarray]:
        w = _float32_cpu(t, self.name)
        clip = flat_quantile(w.abs(), qcfg.clip_percentile / 100.0)
        scale = torch.tensor(clip / self.qmax if clip > 0 else 1.0, dtype=torch.float32)
        if not float(scale) > 0.0:  # clip so tiny that clip/127 underflows fp32
            scale = torch.tensor(1.0)
        q = torch.clamp(torch.round(torch.clamp(w, -clip, clip) / scale), -self.qmax, self.qmax)
        return {"q": q.to(torch.int8).contiguous().numpy(), "scale": scale.numpy()}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                    dtype: str) -> torch.Tensor:
        return _to_torch(parts["q"]).float() * _to_torch(parts["scale"]).float()


QUANTIZERS: dict[str, Quantizer] = {
    "raw": RawQuantizer(),
    "fp32": CastQuantizer("fp32", torch.float32),
    "fp16": CastQuantizer("fp16", torch.float16),
    "int8_tensor": Int8TensorQuantizer(),
    **{f"int{n}_row": IntRowQuantizer(n) for n in range(2, 9)},
}


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


def assign_schemes(state: dict[str, torch.Tensor], qcfg: QuantConfig,
                   rules: tuple[Rule, ...] | list[Rule] = RULES) -> dict[str, str]:
    """Tensor name -> scheme; ValueError lists every tensor matched by zero or several rules."""
    if qcfg.scheme not in QUANTIZERS:
        raise ValueError(f"quant.scheme={qcfg.scheme!r} is not a known scheme; "
                         f"choose one of {', '.join(sorted(QUANTIZERS))}")
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
        if scheme not in QUANTIZERS:
            problems.append(f"{name}: rule {hits[0].name} names unknown scheme {scheme!r}")
            continue
        out[name] = scheme
    if problems:
        raise ValueError("every tensor must match exactly one quantization rule; "
                         + "; ".join(problems))
    return out
