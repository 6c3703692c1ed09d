"""The submitted weights file: a versioned, pickle-free container of quantized tensors.

Layout (all integers little-endian):
    b"LOOPGOLF" | u32 format version | u64 header length | header (UTF-8 JSON, sorted keys, compact)
    | u64 compressed payload length | compressed payload | SHA-256 of every preceding byte (32 B)
Version 2 (written now): the payload is a sequence of compressed streams, one per tensor group
(role x part dtype, e.g. "mlp.int8", "attn.float16"; the role is the stream column of the tensor's
model/params.py PARAM_KINDS row, so tensors of one kind compress together), each with its own codec (quant.codec=best
keeps the smallest of zlib/zstd/lzma/brotli per stream) and optional byte-shuffle. The header holds
the streams, the tensor table (per tensor, in name order: scheme, original shape and dtype, and each
part's dtype, shape, stream, offset and size in that stream's uncompressed bytes), the caller's
`meta` object (the resolved run config, so the model can be rebuilt from the artifact alone), and
the length and SHA-256 of the uncompressed streams laid end to end. Version 1 (one payload, one
codec) is still read.

No pickle and no torch.load: reading an artifact runs no code from it. Every length and offset read
from a file is checked before use (compress/header.py), so malformed or hostile input raises
ArtifactError (a ValueError with a one-line message naming the file and the fix) and never anything
else. Writes go through a temp file + fsync + os.replace, so a crash never leaves a half-written
artifact behind (data/atomic.py, the one atomic writer).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from loopgolf.compress.codecs import (
    CodecError,
    compress,
    compress_smallest,
    decompress,
    order0_bytes,
    resolve_level,
    shuffle_bytes,
    unshuffle_bytes,
)
from loopgolf.compress.header import MAX_PAYLOAD_BYTES, Malformed, check_header
from loopgolf.compress.lqer import SUFFIX_A, SUFFIX_B, factor_shape, fold_lqer
from loopgolf.compress.prune import prune_ones
from loopgolf.compress.quant import PART_DTYPES, QUANTIZERS, TORCH_DTYPES, dtype_name
from loopgolf.compress.rules import QTensor, quantize_state
from loopgolf.config import QuantConfig
from loopgolf.data.atomic import atomic_write_bytes
from loopgolf.model.params import kind_of

MAGIC = b"LOOPGOLF"
FORMAT_VERSION = 2
_PREAMBLE = struct.Struct("<8sIQ")  # magic, version, header length
_U64 = struct.Struct("<Q")
_DIGEST = 32
_FIX = "re-run `loopgolf train` or copy the file again"


class ArtifactError(ValueError):
    """A file that is not a readable loopgolf artifact; the message names the file and the fix."""


@dataclass
class ArtifactReport:
    path: str
    total_bytes: int
    payload_bytes: int  # compressed
    header_bytes: int  # the JSON header alone
    payload_raw_bytes: int
    codec: str  # the streams' codec, or "mixed"
    level: int  # the streams' level, or -1 when mixed
    scheme_counts: dict[str, int] = field(default_factory=dict)
    scheme_raw_bytes: dict[str, int] = field(default_factory=dict)  # uncompressed stored bytes
    group_raw_bytes: dict[str, int] = field(default_factory=dict)  # group = first 2 name components
    # stream name -> [codec, level, shuffle, raw bytes, compressed bytes]
    streams: dict[str, list] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        ratio = self.payload_raw_bytes / self.payload_bytes if self.payload_bytes else 0.0
        framing = self.total_bytes - self.header_bytes - self.payload_bytes
        lines = [(f"{self.path}: {self.total_bytes:,} B total = header {self.header_bytes:,} B + "
                  f"payload {self.payload_bytes:,} B ({self.codec} level {self.level}, "
                  f"{self.payload_raw_bytes:,} B raw, x{ratio:.2f}) + {framing} B framing"),
                 f"{'stream':<18}{'codec':>8}{'shuffle':>8}{'raw bytes':>14}{'compressed':>14}"]
        for name, (codec, level, shuffle, raw, comp) in self.streams.items():
            lines.append(f"{name:<18}{codec + ' ' + str(level):>8}{shuffle:>8}{raw:>14,}{comp:>14,}")
        lines.append(f"{'scheme':<16}{'tensors':>8}{'raw bytes':>16}")
        for s in sorted(self.scheme_counts):
            lines.append(f"{s:<16}{self.scheme_counts[s]:>8,}{self.scheme_raw_bytes[s]:>16,}")
        width = max([len("group")] + [len(g) for g in self.group_raw_bytes]) + 2
        lines.append(f"{'group':<{width}}{'raw bytes':>16}")
        for g in sorted(self.group_raw_bytes):
            lines.append(f"{g:<{width}}{self.group_raw_bytes[g]:>16,}")
        return "\n".join(lines)


def group_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


def stream_of(name: str, shape: tuple[int, ...], dtype: str, part_dtype: str) -> str:
    """The compression stream of one part: the tensor's PARAM_KINDS stream role x part dtype, e.g.
    "mlp.int8". An LQER factor (`<W>.lqer_a`) goes with its matrix W, given W's shape and dtype."""
    base = name.removesuffix(SUFFIX_A).removesuffix(SUFFIX_B)
    like = torch.empty(shape, dtype=TORCH_DTYPES[dtype][0], device="meta")
    return f"{kind_of(base, like).stream}.{part_dtype}"


# --- writing -------------------------------------------------------------------------------------
def pack(state: dict[str, torch.Tensor], meta: dict, qcfg: QuantConfig,
         precomputed: dict[str, QTensor] | None = None) -> bytes:
    """Quantize `state` per the rules (parts in `precomputed`, e.g. from GPTQ, are used as given),
    prune quant.prune_frac of the +-1 values, compress; return the artifact bytes (deterministic)."""
    quantized = quantize_state(state, qcfg, precomputed)
    if qcfg.prune_frac > 0:
        quantized = prune_ones(quantized, state, qcfg.prune_frac)
    return pack_quantized(quantized, {n: (tuple(t.shape), dtype_name(t.dtype))
                                      for n, t in state.items()}, meta, qcfg)


def pack_quantized(quantized: dict[str, QTensor], shapes: dict[str, tuple[tuple[int, ...], str]],
                   meta: dict, qcfg: QuantConfig) -> bytes:
    """Lay quantized tensors out in streams, compress each stream, seal. `shapes` maps each tensor
    name to its original (shape, dtype name)."""
    tensors, keys, payload_raw = layout_streams(quantized, shapes, meta)
    total = sum(map(len, payload_raw))

    def one(k: str, raw: bytes) -> tuple[dict, bytes]:
        itemsize = np.dtype(k.split(".", 1)[1]).itemsize if qcfg.shuffle else 1
        data = shuffle_bytes(raw, itemsize)
        if qcfg.codec == "best":
            codec, level, blob = compress_smallest(data)
        else:
            codec, level = qcfg.codec, resolve_level(qcfg.codec, qcfg.level)
            blob = compress(data, codec, level)
        return {"name": k, "codec": codec, "level": level, "shuffle": itemsize,
                "raw_len": len(raw), "nbytes": len(blob)}, blob

    # streams compress independently, largest first (the codecs release the GIL); the bytes do
    # not depend on the thread count
    with ThreadPoolExecutor(max_workers=max(1, min(len(keys), os.cpu_count() or 1))) as pool:
        futures = {i: pool.submit(one, keys[i], payload_raw[i])
                   for i in sorted(range(len(keys)), key=lambda i: -len(payload_raw[i]))}
        done = [futures[i].result() for i in range(len(keys))]
    streams, blobs = [d for d, _ in done], [b for _, b in done]
    h = hashlib.sha256()
    for raw in payload_raw:
        h.update(raw)
    header = {"meta": meta, "payload_raw_len": total, "payload_sha256": h.hexdigest(),
              "streams": streams, "tensors": tensors}
    return seal(header, b"".join(blobs))


def layout_streams(quantized: dict[str, QTensor], shapes: dict[str, tuple[tuple[int, ...], str]],
                   meta: dict) -> tuple[list[dict], list[str], list[bytes]]:
    """(tensor table, stream names, raw stream bytes) of pack_quantized, before compression."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (a JSON object), got {type(meta).__name__}")
    raw_streams: dict[str, list[bytes]] = {}
    sizes: dict[str, int] = {}
    tensors = []
    for name in sorted(quantized):
        scheme, parts = quantized[name]
        shape, dtype = shapes[name] if name in shapes else factor_shape(name, parts)
        base = name.removesuffix(SUFFIX_A).removesuffix(SUFFIX_B)
        role_shape, role_dtype = shapes.get(base, (shape, dtype))
        table = []
        for pname in sorted(parts):
            a = np.asarray(parts[pname]).copy(order="C")  # ascontiguousarray would make 0-d 1-d
            if a.dtype.name not in PART_DTYPES:
                raise ValueError(f"tensor {name}: part {pname!r} has unsupported dtype {a.dtype}")
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            key = stream_of(name, role_shape, role_dtype, a.dtype.name)
            table.append({"name": pname, "dtype": a.dtype.name, "shape": list(a.shape),
                          "stream": key, "offset": sizes.get(key, 0), "nbytes": len(raw)})
            raw_streams.setdefault(key, []).append(raw)
            sizes[key] = sizes.get(key, 0) + len(raw)
        tensors.append({"name": name, "scheme": scheme, "shape": list(shape), "dtype": dtype,
                        "parts": table})
    keys = sorted(raw_streams)
    index = {k: i for i, k in enumerate(keys)}
    for entry in tensors:
        for p in entry["parts"]:
            p["stream"] = index[p["stream"]]
    payload_raw = [b"".join(raw_streams[k]) for k in keys]
    total = sum(map(len, payload_raw))
    if total > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {total:,} B exceeds the format's {MAX_PAYLOAD_BYTES:,} B")
    return tensors, keys, payload_raw


def entropy_size(quantized: dict[str, QTensor], shapes: dict[str, tuple[tuple[int, ...], str]],
                 meta: dict, qcfg: QuantConfig) -> int:
    """What pack_quantized would write if each stream compressed to the order-0 entropy of its
    (shuffled) bytes: a fast size proxy for the budget fitter (zstd-22 and lzma-9 land within
    1-3 % of it on int4-int8 row grids; the fitter calibrates the ratio with real packs)."""
    tensors, keys, payload_raw = layout_streams(quantized, shapes, meta)
    payload = 0
    for k, raw in zip(keys, payload_raw):
        itemsize = np.dtype(k.split(".", 1)[1]).itemsize if qcfg.shuffle else 1
        payload += math.ceil(order0_bytes(shuffle_bytes(raw, itemsize)))
    header = {"meta": meta, "payload_raw_len": sum(map(len, payload_raw)), "payload_sha256": "0" * 64,
              "streams": [{"name": k, "codec": qcfg.codec, "level": qcfg.level, "shuffle": 1,
                           "raw_len": len(r), "nbytes": len(r)} for k, r in zip(keys, payload_raw)],
              "tensors": tensors}
    return len(seal(header, b"")) + payload


def seal(header: dict, compressed_payload: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Frame a header and compressed payload; exposed for tests that build hostile artifacts."""
    try:
        hb = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact header/meta is not strict JSON: {e}") from None
    body = b"".join([_PREAMBLE.pack(MAGIC, version, len(hb)), hb,
                     _U64.pack(len(compressed_payload)), compressed_payload])
    return body + hashlib.sha256(body).digest()


def write_bytes_atomic(path: str | os.PathLike, blob: bytes) -> None:
    """`path` holds either the old file or the complete new one, whatever happens."""
    atomic_write_bytes(path, blob)


def write_artifact(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict,
                   qcfg: QuantConfig, precomputed: dict[str, QTensor] | None = None
                   ) -> ArtifactReport:
    """Pack and write atomically: `path` holds either the old file or the complete new one."""
    blob = pack(state, meta, qcfg, precomputed)
    write_bytes_atomic(path, blob)
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
    raws: list[bytes] = []
    start = 0
    digest = hashlib.sha256()
    for s in header["streams"]:
        chunk = compressed[start:start + s["nbytes"]]
        start += s["nbytes"]
        try:
            raw = decompress(chunk, s["codec"], max_size=s["raw_len"])
        except CodecError as e:
            raise ArtifactError(f"{source}: stream {s['name'][:40]!r} does not decompress ({e}); "
                                f"{_FIX}") from None
        except MemoryError:
            raise ArtifactError(f"{source}: payload too large for this machine's memory") from None
        if len(raw) != s["raw_len"]:
            raise ArtifactError(f"{source}: stream {s['name'][:40]!r} inflates to {len(raw):,} B, "
                                f"header says {s['raw_len']:,} B; the file is corrupted, {_FIX}")
        raw = unshuffle_bytes(raw, s["shuffle"])
        digest.update(raw)
        raws.append(raw)
    if digest.hexdigest() != header["payload_sha256"]:
        raise ArtifactError(f"{source}: payload checksum mismatch, the file is corrupted; {_FIX}")
    state: dict[str, torch.Tensor] = {}
    try:
        for entry in header["tensors"]:
            parts = {}
            for p in entry["parts"]:
                dt = np.dtype(p["dtype"])
                count = p["nbytes"] // dt.itemsize
                parts[p["name"]] = np.frombuffer(raws[p["stream"]], dtype=dt.newbyteorder("<"),
                                                 count=count, offset=p["offset"]
                                                 ).astype(dt).reshape(p["shape"])
            state[entry["name"]] = QUANTIZERS[entry["scheme"]].dequantize(
                parts, tuple(entry["shape"]), entry["dtype"])
        state = fold_lqer(state)
    except ValueError as e:  # unreachable for headers that passed check_header; kept as a net
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
    streams = {s["name"]: [s["codec"], s["level"], s["shuffle"], s["raw_len"], s["nbytes"]]
               for s in header["streams"]}
    codecs = {(s["codec"], s["level"]) for s in header["streams"]}
    codec, level = codecs.pop() if len(codecs) == 1 else ("mixed", -1)
    return ArtifactReport(path=source, total_bytes=len(blob), payload_bytes=len(compressed),
                          header_bytes=header_len, payload_raw_bytes=header["payload_raw_len"],
                          codec=codec, level=level, scheme_counts=dict(counts),
                          scheme_raw_bytes=dict(scheme_raw), group_raw_bytes=dict(group_raw),
                          streams=streams)


def _parse(blob: bytes, source: str) -> tuple[dict, memoryview, int]:
    """Check framing, checksum and header; return (header in v2 form, payload, header length)."""
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
        header = check_header(header, version, payload_len)
    except (ValueError, RecursionError, Malformed) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(f"{source}: malformed header ({detail}); the file was not written by "
                            f"this loopgolf or is corrupted") from None
    return header, view[body_start:body_start + payload_len], header_len
