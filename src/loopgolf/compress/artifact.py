"""The submitted weights file: a versioned, pickle-free container of quantized tensors.

Layout (all integers little-endian):
    b"LOOPGOLF" | u32 format version | u64 header length | header (UTF-8 JSON, sorted keys, compact)
    | u64 compressed payload length | compressed payload | SHA-256 of every preceding byte (32 B)
The header holds the codec, the tensor table (per tensor, in name order: scheme, original shape and
dtype, and each part's dtype, shape, offset and size in the uncompressed payload), the caller's
`meta` object (the resolved run config, so the model can be rebuilt from the artifact alone), and
the length and SHA-256 of the uncompressed payload.

No pickle and no torch.load: reading an artifact runs no code from it. Every length and offset read
from a file is checked before use, so malformed or hostile input raises ArtifactError (a ValueError
with a one-line message naming the file and the fix) and never anything else. Writes go through a
temp file + fsync + os.replace, so a crash never leaves a half-written artifact behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import struct
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from loopgolf.compress.codecs import (
    CODECS,
    CodecError,
    compress,
    decompress,
    resolve_level,
)
from loopgolf.compress.quant import (
    PART_DTYPES,
    QUANTIZERS,
    TORCH_DTYPES,
    assign_schemes,
    dtype_name,
)
from loopgolf.config import QuantConfig

MAGIC = b"LOOPGOLF"
FORMAT_VERSION = 1
MAX_PAYLOAD_BYTES = 1 << 31  # uncompressed; real artifacts are far below, hostile headers are not
_PREAMBLE = struct.Struct("<8sIQ")  # magic, version, header length
_U64 = struct.Struct("<Q")
_DIGEST = 32
_MAX_NDIM = 32
_FIX = "re-run `loopgolf train` or copy the file again"
_SHA_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ValueError):
    """A file that is not a readable loopgolf artifact; the message names the file and the fix."""


class _Malformed(Exception):
    """Internal: a header that passed the checksum but breaks the format (crafted or buggy)."""


@dataclass
class ArtifactReport:
    path: str
    total_bytes: int
    payload_bytes: int  # compressed
    header_bytes: int  # the JSON header alone
    payload_raw_bytes: int
    codec: str
    level: int
    scheme_counts: dict[str, int] = field(default_factory=dict)
    scheme_raw_bytes: dict[str, int] = field(default_factory=dict)  # uncompressed stored bytes
    group_raw_bytes: dict[str, int] = field(default_factory=dict)  # group = first 2 name components

    def as_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        ratio = self.payload_raw_bytes / self.payload_bytes if self.payload_bytes else 0.0
        framing = self.total_bytes - self.header_bytes - self.payload_bytes
        lines = [(f"{self.path}: {self.total_bytes:,} B total = header {self.header_bytes:,} B + "
                  f"payload {self.payload_bytes:,} B ({self.codec} level {self.level}, "
                  f"{self.payload_raw_bytes:,} B raw, x{ratio:.2f}) + {framing} B framing"),
                 f"{'scheme':<16}{'tensors':>8}{'raw bytes':>16}"]
        for s in sorted(self.scheme_counts):
            lines.append(f"{s:<16}{self.scheme_counts[s]:>8,}{self.scheme_raw_bytes[s]:>16,}")
        width = max([len("group")] + [len(g) for g in self.group_raw_bytes]) + 2
        lines.append(f"{'group':<{width}}{'raw bytes':>16}")
        for g in sorted(self.group_raw_bytes):
            lines.append(f"{g:<{width}}{self.group_raw_bytes[g]:>16,}")
        return "\n".join(lines)


def group_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


# --- writing -------------------------------------------------------------------------------------
def pack(state: dict[str, torch.Tensor], meta: dict, qcfg: QuantConfig) -> bytes:
    """Quantize `state` per the rules, compress it, return the artifact bytes (deterministic)."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (a JSON object), got {type(meta).__name__}")
    schemes = assign_schemes(state, qcfg)
    chunks: list[bytes] = []
    offset = 0
    tensors = []
    for name in sorted(state):
        t, scheme = state[name], schemes[name]
        try:
            parts = QUANTIZERS[scheme].quantize(t, qcfg)
        except ValueError as e:
            raise ValueError(f"tensor {name}: {e}") from None
        table = []
        for pname in sorted(parts):
            a = np.asarray(parts[pname]).copy(order="C")  # ascontiguousarray would make 0-d 1-d
            if a.dtype.name not in PART_DTYPES:
                raise ValueError(f"tensor {name}: part {pname!r} has unsupported dtype {a.dtype}")
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            table.append({"name": pname, "dtype": a.dtype.name, "shape": list(a.shape),
                          "offset": offset, "nbytes": len(raw)})
            chunks.append(raw)
            offset += len(raw)
        tensors.append({"name": name, "scheme": scheme, "shape": list(t.shape),
                        "dtype": dtype_name(t.dtype), "parts": table})
    payload = b"".join(chunks)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload):,} B exceeds the format's "
                         f"{MAX_PAYLOAD_BYTES:,} B")
    header = {"codec": qcfg.codec, "level": resolve_level(qcfg.codec, qcfg.level), "meta": meta,
              "payload_raw_len": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "tensors": tensors}
    return seal(header, compress(payload, qcfg.codec, qcfg.level))


def seal(header: dict, compressed_payload: bytes) -> bytes:
    """Frame a header and compressed payload; exposed for tests that build hostile artifacts."""
    try:
        hb = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact header/meta is not strict JSON: {e}") from None
    body = b"".join([_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(hb)), hb,
                     _U64.pack(len(compressed_payload)), compressed_payload])
    return body + hashlib.sha256(body).digest()


def write_artifact(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict,
                   qcfg: QuantConfig) -> ArtifactReport:
    """Pack and write atomically: `path` holds either the old file or the complete new one."""
    path = Path(path)
    blob = pack(state, meta, qcfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # persist the rename itself (POSIX)
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    return inspect_artifact(blob, str(path))


# --- reading -------------------------------------------------------------------------------------
def read_artifact(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror or e}); check the path") from None
    return unpack(blob, str(path))


def unpack(blob: bytes, source: str = "<bytes>") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict of float32 / original-dtype tensors, meta); ArtifactError on any bad input."""
    header, compressed, _ = _parse(blob, source)
    raw_len = header["payload_raw_len"]
    try:
        payload = decompress(compressed, header["codec"], max_size=raw_len)
    except CodecError as e:
        raise ArtifactError(f"{source}: payload does not decompress ({e}); {_FIX}") from None
    except MemoryError:
        raise ArtifactError(f"{source}: payload too large for this machine's memory") from None
    if len(payload) != raw_len:
        raise ArtifactError(f"{source}: payload inflates to {len(payload):,} B, header says "
                            f"{raw_len:,} B; the file is corrupted, {_FIX}")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise ArtifactError(f"{source}: payload checksum mismatch, the file is corrupted; {_FIX}")
    state: dict[str, torch.Tensor] = {}
    try:
        for entry in header["tensors"]:
            parts = {}
            for p in entry["parts"]:
                dt = np.dtype(p["dtype"])
                count = p["nbytes"] // dt.itemsize
                parts[p["name"]] = np.frombuffer(payload, dtype=dt.newbyteorder("<"), count=count,
                                                 offset=p["offset"]).astype(dt).reshape(p["shape"])
            state[entry["name"]] = QUANTIZERS[entry["scheme"]].dequantize(
                parts, tuple(entry["shape"]), entry["dtype"])
    except ValueError as e:  # unreachable for headers that passed _check_header; kept as a net
        raise ArtifactError(f"{source}: malformed tensor data ({e}); {_FIX}") from None
    except MemoryError:
        raise ArtifactError(f"{source}: tensors too large for this machine's memory") from None
    return state, header["meta"]


def inspect_artifact(blob: bytes, source: str = "<bytes>") -> ArtifactReport:
    """Size report from the framing and header alone (the payload is not decompressed)."""
    header, compressed, header_len = _parse(blob, source)
    counts: Counter[str] = Counter()
    scheme_raw: Counter[str] = Counter()
    group_raw: Counter[str] = Counter()
    for entry in header["tensors"]:
        nbytes = sum(p["nbytes"] for p in entry["parts"])
        counts[entry["scheme"]] += 1
        scheme_raw[entry["scheme"]] += nbytes
        group_raw[group_of(entry["name"])] += nbytes
    return ArtifactReport(path=source, total_bytes=len(blob), payload_bytes=len(compressed),
                          header_bytes=header_len, payload_raw_bytes=header["payload_raw_len"],
                          codec=header["codec"], level=header["level"], scheme_counts=dict(counts),
                          scheme_raw_bytes=dict(scheme_raw), group_raw_bytes=dict(group_raw))


def _parse(blob: bytes, source: str) -> tuple[dict, memoryview, int]:
    """Check framing, checksum and header; return (header, compressed payload, header length)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ArtifactError(f"{source}: expected bytes, got {type(blob).__name__}")
    view = memoryview(blob).cast("B")
    n = len(view)
    if bytes(view[:8]) != MAGIC[:min(n, 8)]:
        raise ArtifactError(f"{source}: not a loopgolf artifact (bad magic)")
    if n < _PREAMBLE.size:
        raise ArtifactError(f"{source}: truncated ({n} bytes, the preamble alone is "
                            f"{_PREAMBLE.size}); {_FIX}")
    _, version, header_len = _PREAMBLE.unpack_from(view, 0)
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{source}: format version {version} is newer than this loopgolf "
                            f"supports ({FORMAT_VERSION}); upgrade loopgolf")
    if version < 1:
        raise ArtifactError(f"{source}: unknown format version {version}; the file is corrupted")
    head_end = _PREAMBLE.size + header_len
    if head_end + _U64.size > n:
        raise ArtifactError(f"{source}: truncated (header says {header_len:,} bytes of header, "
                            f"{max(0, n - _PREAMBLE.size):,} present); {_FIX}")
    (payload_len,) = _U64.unpack_from(view, head_end)
    body_start = head_end + _U64.size
    end = body_start + payload_len + _DIGEST
    if end > n:
        present = n - body_start
        what = (f"header says {payload_len:,} bytes of payload, {present:,} present"
                if present < payload_len else
                f"checksum needs {_DIGEST} bytes, {present - payload_len} present")
        raise ArtifactError(f"{source}: truncated ({what}); {_FIX}")
    if end < n:
        if hashlib.sha256(view[:end - _DIGEST]).digest() == bytes(view[end - _DIGEST:end]):
            raise ArtifactError(f"{source}: {n - end:,} stray bytes after the end of the artifact; "
                                f"{_FIX}")
        raise ArtifactError(f"{source}: checksum mismatch, the file is corrupted; {_FIX}")
    if hashlib.sha256(view[:n - _DIGEST]).digest() != bytes(view[n - _DIGEST:]):
        raise ArtifactError(f"{source}: checksum mismatch, the file is corrupted; {_FIX}")
    try:
        header = json.loads(bytes(view[_PREAMBLE.size:head_end]).decode("utf-8"))
        _check_header(header)
    except (ValueError, RecursionError, _Malformed) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(f"{source}: malformed header ({detail}); the file was not written by "
                            f"this loopgolf or is corrupted") from None
    return header, view[body_start:body_start + payload_len], header_len


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise _Malformed(msg)


def _get(d: object, key: str, kind: type, where: str):
    _need(isinstance(d, dict) and key in d, f"{where}: missing {key!r}")
    v = d[key]  # type: ignore[index]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    _need(ok, f"{where}.{key} must be {kind.__name__}, got {type(v).__name__}")
    if kind is int:
        _need(0 <= v < 1 << 62, f"{where}.{key}={v} is out of range")
    return v


def _shape(v: object, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > _MAX_NDIM:
        raise _Malformed(f"{where} must be a list of <= {_MAX_NDIM} ints")
    _need(all(type(d) is int and 0 <= d < 1 << 62 for d in v), f"{where} has a bad dimension")
    return tuple(v)


def _check_header(h: object) -> None:
    """Validate every field `unpack` touches, including that the parts tile the payload exactly."""
    _need(isinstance(h, dict), "header must be a JSON object")
    codec = _get(h, "codec", str, "header")
    _need(codec in CODECS, f"unknown codec {codec[:40]!r}")
    _get(h, "level", int, "header")
    _get(h, "meta", dict, "header")
    raw_len = _get(h, "payload_raw_len", int, "header")
    _need(raw_len <= MAX_PAYLOAD_BYTES, f"payload_raw_len={raw_len} exceeds {MAX_PAYLOAD_BYTES}")
    _need(_SHA_HEX.fullmatch(_get(h, "payload_sha256", str, "header")) is not None,
          "payload_sha256 must be 64 lowercase hex digits")
    tensors = _get(h, "tensors", list, "header")
    offset = 0
    prev_name = None
    for i, entry in enumerate(tensors):
        where = f"tensors[{i}]"
        name = _get(entry, "name", str, where)
        _need(prev_name is None or name > prev_name, f"{where}: names not sorted or duplicated")
        prev_name = name
        scheme = _get(entry, "scheme", str, where)
        _need(scheme in QUANTIZERS, f"{where}: unknown scheme {scheme[:40]!r}")
        dtype = _get(entry, "dtype", str, where)
        _need(dtype in TORCH_DTYPES, f"{where}: unsupported dtype {dtype[:40]!r}")
        shape = _shape(entry.get("shape"), f"{where}.shape")
        try:
            spec = QUANTIZERS[scheme].part_spec(shape, dtype)
        except ValueError as e:
            raise _Malformed(f"{where}: {e}") from None
        parts = _get(entry, "parts", list, where)
        _need([_get(p, "name", str, where) for p in parts] == sorted(spec),
              f"{where}: parts must be {sorted(spec)}")
        for p in parts:
            pwhere = f"{where}.parts.{p['name']}"
            pdtype = _get(p, "dtype", str, pwhere)
            pshape = _shape(p.get("shape"), f"{pwhere}.shape")
            _need((pdtype, pshape) == spec[p["name"]], f"{pwhere}: dtype/shape differ from scheme")
            _need(_get(p, "offset", int, pwhere) == offset, f"{pwhere}: parts must tile payload")
            nbytes = _get(p, "nbytes", int, pwhere)
            _need(nbytes == math.prod(pshape) * np.dtype(pdtype).itemsize,
                  f"{pwhere}: nbytes disagrees with dtype and shape")
            offset += nbytes
            _need(offset <= raw_len, f"{pwhere}: extends past the payload")
    _need(offset == raw_len, f"parts cover {offset} of {raw_len} payload bytes")
