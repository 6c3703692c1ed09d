"""Validation of an artifact header that passed its checksum: every field `unpack` touches is checked.

A checksum only proves the file is intact, not that its writer was honest or bug-free, so a crafted
header must fail here with `Malformed` (turned into ArtifactError by artifact.py) and never reach
numpy with a bad offset, shape or dtype. Version 1 (one payload, one codec) is normalized into the
version-2 form (a list of compressed streams, each part in one stream) so `unpack` has one path.
"""
from __future__ import annotations

import math
import re

import numpy as np

from loopgolf.compress.codecs import CODECS
from loopgolf.compress.quant import QUANTIZERS, TORCH_DTYPES

MAX_PAYLOAD_BYTES = 1 << 31  # uncompressed; real artifacts are far below, hostile headers are not
MAX_SHUFFLE = 16
_MAX_NDIM = 32
_SHA_HEX = re.compile(r"[0-9a-f]{64}")


class Malformed(Exception):
    """A header that passed the checksum but breaks the format (crafted or buggy)."""


def need(ok: bool, msg: str) -> None:
    if not ok:
        raise Malformed(msg)


def get(d: object, key: str, kind: type, where: str):
    need(isinstance(d, dict) and key in d, f"{where}: missing {key!r}")
    v = d[key]  # type: ignore[index]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    need(ok, f"{where}.{key} must be {kind.__name__}, got {type(v).__name__}")
    if kind is int:
        need(0 <= v < 1 << 62, f"{where}.{key}={v} is out of range")
    return v


def _shape(v: object, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > _MAX_NDIM:
        raise Malformed(f"{where} must be a list of <= {_MAX_NDIM} ints")
    need(all(type(d) is int and 0 <= d < 1 << 62 for d in v), f"{where} has a bad dimension")
    return tuple(v)


def _streams(h: dict, version: int, payload_len: int, raw_len: int) -> list[dict]:
    if version == 1:
        codec = get(h, "codec", str, "header")
        need(codec in CODECS, f"unknown codec {codec[:40]!r}")
        return [{"name": "payload", "codec": codec, "level": get(h, "level", int, "header"),
                 "shuffle": 1, "raw_len": raw_len, "nbytes": payload_len}]
    streams = get(h, "streams", list, "header")
    total_raw = total = 0
    for i, s in enumerate(streams):
        where = f"streams[{i}]"
        get(s, "name", str, where)
        codec = get(s, "codec", str, where)
        need(codec in CODECS, f"{where}: unknown codec {codec[:40]!r}")
        get(s, "level", int, where)
        shuffle = get(s, "shuffle", int, where)
        need(1 <= shuffle <= MAX_SHUFFLE, f"{where}.shuffle={shuffle} must be in 1..{MAX_SHUFFLE}")
        s_raw = get(s, "raw_len", int, where)
        need(s_raw % shuffle == 0, f"{where}: raw_len is not a multiple of shuffle")
        total_raw += s_raw
        total += get(s, "nbytes", int, where)
    need(total_raw == raw_len, f"streams hold {total_raw} raw bytes, payload_raw_len is {raw_len}")
    need(total == payload_len, f"streams hold {total} compressed bytes, the payload has {payload_len}")
    return streams


def check_header(h: object, version: int, payload_len: int) -> dict:
    """Validate; return the header in version-2 form (with `streams`, every part with `stream`)."""
    need(isinstance(h, dict), "header must be a JSON object")
    assert isinstance(h, dict)
    get(h, "meta", dict, "header")
    raw_len = get(h, "payload_raw_len", int, "header")
    need(raw_len <= MAX_PAYLOAD_BYTES, f"payload_raw_len={raw_len} exceeds {MAX_PAYLOAD_BYTES}")
    need(_SHA_HEX.fullmatch(get(h, "payload_sha256", str, "header")) is not None,
         "payload_sha256 must be 64 lowercase hex digits")
    streams = _streams(h, version, payload_len, raw_len)
    cursor = [0] * len(streams)
    tensors = get(h, "tensors", list, "header")
    out_tensors = []
    prev_name = None
    for i, entry in enumerate(tensors):
        where = f"tensors[{i}]"
        name = get(entry, "name", str, where)
        need(prev_name is None or name > prev_name, f"{where}: names not sorted or duplicated")
        prev_name = name
        scheme = get(entry, "scheme", str, where)
        need(scheme in QUANTIZERS, f"{where}: unknown scheme {scheme[:40]!r}")
        dtype = get(entry, "dtype", str, where)
        need(dtype in TORCH_DTYPES, f"{where}: unsupported dtype {dtype[:40]!r}")
        shape = _shape(entry.get("shape"), f"{where}.shape")
        try:
            spec = QUANTIZERS[scheme].part_spec(shape, dtype)
        except ValueError as e:
            raise Malformed(f"{where}: {e}") from None
        parts = get(entry, "parts", list, where)
        need([get(p, "name", str, where) for p in parts] == sorted(spec),
             f"{where}: parts must be {sorted(spec)}")
        out_parts = []
        for p in parts:
            pwhere = f"{where}.parts.{p['name']}"
            pdtype = get(p, "dtype", str, pwhere)
            pshape = _shape(p.get("shape"), f"{pwhere}.shape")
            need((pdtype, pshape) == spec[p["name"]], f"{pwhere}: dtype/shape differ from scheme")
            k = 0 if version == 1 else get(p, "stream", int, pwhere)
            need(k < len(streams), f"{pwhere}: stream {k} does not exist")
            need(get(p, "offset", int, pwhere) == cursor[k], f"{pwhere}: parts must tile payload")
            nbytes = get(p, "nbytes", int, pwhere)
            need(nbytes == math.prod(pshape) * np.dtype(pdtype).itemsize,
                 f"{pwhere}: nbytes disagrees with dtype and shape")
            cursor[k] += nbytes
            need(cursor[k] <= streams[k]["raw_len"], f"{pwhere}: extends past its stream")
            out_parts.append({**p, "stream": k})
        out_tensors.append({**entry, "parts": out_parts})
    for k, s in enumerate(streams):
        need(cursor[k] == s["raw_len"], f"parts cover {cursor[k]} of {s['raw_len']} bytes of "
                                        f"stream {k}")
    return {**h, "streams": streams, "tensors": out_tensors}
