"""Per-tensor storage schemes for the artifact, and the name-pattern rules that pick one per tensor.

The first scheme set reproduces the challenge baseline's int8 export (per-row path: baseline
L321-334): non-float tensors pass through untouched; float tensors of <= 65,536 elements are kept
(fp32 for the control tensors such as `q_gain` and `resid_mix`, fp16 otherwise); larger matrices
get per-row int8 with fp16 scales clipped at the 99.99984th percentile of |w|; other large tensors
get a single fp32 scale. Per-row intN (N = 2..8, int8 container) with a percentile, searched or
SDClip clip, per-row level grids qL_row (+-L, PR #1453's int7/"int5" widths) and BitNet b1.58
ternary are there for lower bit widths; `quant.bits_rules` gives the
matrices a scheme per name pattern (the rules live in compress/rules.py).

Each quantizer turns a tensor into named numpy parts (the artifact stores raw bytes, never pickles)
and back into float32. Quantization always runs on CPU so that identical weights give identical
bytes whatever device they were trained on.
"""
from __future__ import annotations

import numpy as np
import torch

from loopgolf.config import QuantConfig

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
    rank = torch.tensor(q, dtype=s.dtype, device=s.device) * (s.shape[-1] - 1)
    below, above = rank.long(), rank.ceil().long()
    return s[..., below].lerp(s[..., above], rank - below)


def row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile of a 2-D tensor, bit-identical to torch.quantile(a, q, dim=1)."""
    rows, cols = a.shape
    if rows == 0 or cols == 0:
        return torch.zeros(rows, dtype=a.dtype, device=a.device)
    if cols > _QUANTILE_MAX_NUMEL:
        return _quantile_sorted(a, q)
    step = _QUANTILE_MAX_NUMEL // cols  # row blocks are independent, so chunking changes nothing
    return torch.cat([torch.quantile(a[i:i + step], q, dim=1) for i in range(0, rows, step)])


def row_quantiles(a: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """(len(qs), rows): row_quantile for each q, from one sort per row block (bit-identical)."""
    rows, cols = a.shape
    if rows == 0 or cols == 0:
        return torch.zeros(len(qs), rows, dtype=a.dtype, device=a.device)
    if cols > _QUANTILE_MAX_NUMEL:
        return torch.stack([_quantile_sorted(a, q) for q in qs])
    qt = torch.tensor(qs, dtype=a.dtype, device=a.device)
    step = _QUANTILE_MAX_NUMEL // cols
    return torch.cat([torch.quantile(a[i:i + step], qt, dim=1) for i in range(0, rows, step)], dim=1)


def flat_quantile(a: torch.Tensor, q: float) -> float:
    a = a.flatten()
    if a.numel() == 0:
        return 0.0
    if a.numel() > _QUANTILE_MAX_NUMEL:
        return float(_quantile_sorted(a, q).item())
    return float(torch.quantile(a, q).item())


def check_parts(scheme: str, parts: dict[str, np.ndarray], spec: Spec) -> None:
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
        check_parts(self.name, parts, self.part_spec(shape, dtype))
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


class RowGridQuantizer(Quantizer):
    """Symmetric per-row grid: int8 container q in [-qmax, qmax], one fp16 scale per row.

    Subclasses choose the scale (`row_scale`). `grid` is the one code path from a matrix to its
    stored codes and scales: `quantize` (the artifact), `fake_quantize` (QAT's forward weight,
    compress/qat.py) and GPTQ's scales (compress/gptq.py) all go through it, so training sees
    exactly the grid the exporter writes.
    """

    qmax = 1

    def part_spec(self, shape: tuple[int, ...], dtype: str) -> Spec:
        if len(shape) != 2:
            raise ValueError(f"scheme {self.name} needs a 2-D tensor, got shape {list(shape)}")
        return {"q": ("int8", tuple(shape)), "scale": ("float16", (shape[0],))}

    def row_scale(self, w: torch.Tensor, qcfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(fp32 scale per row, clip per row) for a float32 CPU matrix."""
        raise NotImplementedError

    def grid(self, w: torch.Tensor, qcfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, scales) of a float32 matrix on any device: q as float32 integers in
        [-qmax, qmax] (rounded with the fp32 scale, as the baseline does) and the fp16 scale per
        row that the artifact stores."""
        scale, clip = self.row_scale(w, qcfg)
        return _round_codes(w, scale, clip, self.qmax), scale.to(torch.float16)

    def fake_quantize(self, w: torch.Tensor, qcfg: QuantConfig) -> torch.Tensor:
        """dequantize(quantize(w)) computed in torch on w's device (bit for bit on CPU)."""
        q, scale = self.grid(w.detach().float(), qcfg)
        return q * scale.float()[:, None]

    def quantize(self, t: torch.Tensor, qcfg: QuantConfig) -> dict[str, np.ndarray]:
        w = _float32_cpu(t, self.name)
        self.part_spec(tuple(w.shape), "float32")
        q, scale = self.grid(w, qcfg)
        return {"q": q.to(torch.int8).contiguous().numpy(), "scale": scale.contiguous().numpy()}

    def _dequantize(self, parts: dict[str, np.ndarray], shape: tuple[int, ...],
                    dtype: str) -> torch.Tensor:
        return _to_torch(parts["q"]).float() * _to_torch(parts["scale"]).float()[:, None]


def _round_codes(w: torch.Tensor, scale: torch.Tensor, clip: torch.Tensor, qmax: int) -> torch.Tensor:
    clipped = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
    return torch.clamp(torch.round(clipped / scale[:, None]), -qmax, qmax)


# Candidate clips of quant.clip=search, as percentiles of |w_row| (record (a) searches 5 in 99.9..100);
# quant.search_percentiles replaces them (PR #1453 / #927: 99.99, 99.995, 99.999, 99.9995, 99.9999).
SEARCH_PERCENTILES = (99.0, 99.5, 99.9, 99.99, 99.99984, 100.0)


def search_percentiles(qcfg: QuantConfig) -> tuple[float, ...]:
    """The candidate clip percentiles of quant.clip=search: quant.search_percentiles or the default."""
    if not qcfg.search_percentiles.strip():
        return SEARCH_PERCENTILES
    return tuple(float(x) for x in qcfg.search_percentiles.split(","))


class IntRowQuantizer(RowGridQuantizer):
    """Per-row intN: scale = max(clip / qmax, row_scale_min) computed in fp32 (q is rounded with the
    fp32 scale, the scale is then stored as fp16, as the baseline does). The clip per row is
    quantile(|w_row|, clip_percentile) (baseline L321-334), the lowest-MSE candidate of the search
    percentiles (quant.clip=search), or sdclip_k * std(w_row) (quant.clip=sdclip, PR #1394).
    """

    def __init__(self, bits: int) -> None:
        if not 2 <= bits <= 8:
            raise ValueError(f"per-row intN supports N in 2..8, got {bits}")
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        self.name = f"int{bits}_row"

    def _scale_of(self, clip: torch.Tensor, qcfg: QuantConfig) -> torch.Tensor:
        floor = max(qcfg.row_scale_min, 1.0 / self.qmax if qcfg.row_scale_min_qmax else 0.0, _FP16_MIN_NORMAL)
        return (clip / self.qmax).clamp(min=floor, max=_FP16_MAX)

    def row_scale(self, w: torch.Tensor, qcfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
        if qcfg.clip == "sdclip":
            std = w.std(dim=1) if w.shape[1] > 1 else torch.zeros(w.shape[0], device=w.device)
            clip = qcfg.sdclip_k * std
            return self._scale_of(clip, qcfg), clip
        if qcfg.clip != "search":
            clip = row_quantile(w.abs(), qcfg.clip_percentile / 100.0)
            return self._scale_of(clip, qcfg), clip
        best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
        best_clip = torch.zeros(w.shape[0], device=w.device)
        pcts = search_percentiles(qcfg)
        clips = row_quantiles(w.abs(), tuple(p / 100.0 for p in pcts))
        for clip in clips:  # ties keep the earlier candidate: deterministic
            scale = self._scale_of(clip, qcfg)
            q = _round_codes(w, scale, clip, self.qmax)
            err = ((q * scale.half().float()[:, None] - w) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_clip = torch.where(better, clip, best_clip)
        return self._scale_of(best_clip, qcfg), best_clip


class LevelsRowQuantizer(IntRowQuantizer):
    """A per-row grid of +-L (2L + 1 levels; int8 container), named qL_row: PR #1453's convention,
    which sets the levels directly (QUANT_LEVELS=63 for attention and embeddings, MLP_QUANT_LEVELS=16
    for the MLP, L498-539): q63_row is int7_row's grid, q16_row its "int5" (33 levels; a true int5
    is int5_row, +-15). Clip and scale as IntRowQuantizer."""

    def __init__(self, levels: int) -> None:
        if not 1 <= levels <= 127:
            raise ValueError(f"per-row level grids support L in 1..127, got {levels}")
        self.bits = levels.bit_length() + 1  # the int width holding +-L
        self.qmax = levels
        self.name = f"q{levels}_row"


class TernaryRowQuantizer(RowGridQuantizer):
    """BitNet b1.58 absmean ternary, per row: scale = mean(|w_row|), q = clamp(round(w/scale), -1, 1)."""

    name = "ternary_row"
    qmax = 1

    def row_scale(self, w: torch.Tensor, qcfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
        scale = w.abs().mean(dim=1).clamp(min=_FP16_MIN_NORMAL, max=_FP16_MAX)
        return scale, scale * 1.5  # the clip is inert: round(w/scale) is clamped to +-1 anyway


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
    "ternary_row": TernaryRowQuantizer(),
    **{f"q{n}_row": LevelsRowQuantizer(n) for n in range(1, 128)},
}


def scheme_list() -> str:
    """The known scheme names for error messages, the level grids folded into one entry."""
    return ", ".join([n for n in sorted(QUANTIZERS) if not n.startswith("q")] + ["q1_row..q127_row"])
