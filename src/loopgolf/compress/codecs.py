"""Byte codecs for the artifact payload: zlib, zstd, lzma, brotli behind one registry.

The challenge counts compressed bytes, so every codec runs at its strongest level by default
(level -1). Decompression takes a hard output cap because artifacts can come from anywhere: a
stream that would inflate past `max_size` is refused without ever buffering the excess (the
decompression-bomb guard). brotli is an optional dependency (the `lab` extra) and is imported only
when used. `shuffle_bytes` regroups the bytes of multi-byte elements (all low bytes, then all
high bytes...), which often helps entropy coders on fp16/fp32 data; it is not applied by default.
`compress_smallest` tries every codec on one stream and keeps the smallest (per tensor group);
`order0_bytes` is the byte-histogram entropy, the budget fitter's fast size proxy.
"""
from __future__ import annotations

import importlib.util
import lzma
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard


class CodecError(ValueError):
    """Unknown codec, corrupt or truncated stream, or output over the caller's size cap."""


@dataclass(frozen=True)
class Codec:
    name: str
    levels: tuple[int, int]  # valid (min, max); -1 always means max
    _compress: Callable[[bytes, int], bytes]
    _decompress: Callable[[bytes, int], bytes]  # (data, max_size) -> bytes, may return > max_size

    def resolve_level(self, level: int) -> int:
        if level == -1:
            return self.levels[1]
        lo, hi = self.levels
        if not lo <= level <= hi:
            raise CodecError(f"{self.name} level {level} is out of range; use {lo}..{hi} "
                             f"or -1 for {hi}")
        return level


def _zlib_compress(data: bytes, level: int) -> bytes:
    return zlib.compress(data, level)


def _zlib_decompress(data: bytes, max_size: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, max_size + 1)
    if len(out) <= max_size and not d.eof:
        raise CodecError("zlib stream is truncated")
    if d.eof and d.unused_data:
        raise CodecError(f"{len(d.unused_data)} bytes of trailing data after the zlib stream")
    return out


def _lzma_compress(data: bytes, level: int) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=level)


def _lzma_decompress(data: bytes, max_size: int) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = d.decompress(data, max_length=max_size + 1)
    if len(out) <= max_size and not d.eof:
        raise CodecError("xz stream is truncated")
    if d.eof and d.unused_data:
        raise CodecError(f"{len(d.unused_data)} bytes of trailing data after the xz stream")
    return out


def _zstd_compress(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def _zstd_decompress(data: bytes, max_size: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CodecError(f"not a zstd frame ({e})") from None
    # A frame that declares its size is decoded into a buffer of that size, so check it first.
    if declared > max_size:
        raise CodecError(f"zstd frame declares {declared:,} bytes, over the {max_size:,} byte cap")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=max(max_size, 1))


def _brotli():
    try:
        import brotli
    except ImportError:
        raise CodecError("codec 'brotli' needs the brotli package: pip install brotli") from None
    return brotli


def _brotli_compress(data: bytes, level: int) -> bytes:
    return _brotli().compress(data, quality=level)


def _brotli_decompress(data: bytes, max_size: int) -> bytes:
    brotli = _brotli()
    d = brotli.Decompressor()
    chunks: list[bytes] = []
    total = 0
    try:
        chunks.append(d.process(data, output_buffer_limit=max_size + 1))
        total = len(chunks[0])
        while total <= max_size and not d.is_finished() and not d.can_accept_more_data():
            chunk = d.process(b"", output_buffer_limit=max_size + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except TypeError:  # brotli < 1.2 has no output_buffer_limit: feed small slices instead
        d, chunks, total = brotli.Decompressor(), [], 0
        for i in range(0, len(data), 1024):
            chunks.append(d.process(data[i:i + 1024]))
            total += len(chunks[-1])
            if total > max_size:
                break
    if total <= max_size and not d.is_finished():
        raise CodecError("brotli stream is truncated")
    return b"".join(chunks)


CODECS: dict[str, Codec] = {
    "zlib": Codec("zlib", (0, 9), _zlib_compress, _zlib_decompress),
    "zstd": Codec("zstd", (1, 22), _zstd_compress, _zstd_decompress),
    "lzma": Codec("lzma", (0, 9), _lzma_compress, _lzma_decompress),
    "brotli": Codec("brotli", (0, 11), _brotli_compress, _brotli_decompress),
}


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[name]


def resolve_level(codec: str, level: int = -1) -> int:
    """The concrete level `compress` uses for (codec, level); -1 = strongest."""
    return get_codec(codec).resolve_level(level)


def compress(data: bytes, codec: str, level: int = -1) -> bytes:
    c = get_codec(codec)
    return c._compress(bytes(data), c.resolve_level(level))


def decompress(data: bytes, codec: str, max_size: int) -> bytes:
    """Inflate `data`; refuse (CodecError) corrupt/truncated streams and output over `max_size`."""
    c = get_codec(codec)
    if max_size < 0:
        raise CodecError(f"max_size must be >= 0, got {max_size}")
    libs_errors: tuple[type[BaseException], ...] = (zlib.error, lzma.LZMAError, zstandard.ZstdError)
    if codec == "brotli":
        libs_errors += (_brotli().error,)
    try:
        out = c._decompress(bytes(data), max_size)
    except libs_errors as e:
        raise CodecError(f"corrupt {codec} stream ({e})") from None
    if len(out) > max_size:
        raise CodecError(f"{codec} output exceeds the {max_size:,} byte cap (decompression bomb?)")
    return out


def shuffle_bytes(buf: bytes, itemsize: int) -> bytes:
    """Byte-plane transpose: byte 0 of every item, then byte 1 of every item, ..."""
    if itemsize < 1 or len(buf) % itemsize:
        raise ValueError(f"{len(buf)} bytes are not a whole number of {itemsize}-byte items")
    if itemsize == 1:
        return bytes(buf)
    a = np.frombuffer(buf, dtype=np.uint8).reshape(-1, itemsize)
    return a.T.tobytes()


def unshuffle_bytes(buf: bytes, itemsize: int) -> bytes:
    """Inverse of `shuffle_bytes`."""
    if itemsize < 1 or len(buf) % itemsize:
        raise ValueError(f"{len(buf)} bytes are not a whole number of {itemsize}-byte items")
    if itemsize == 1:
        return bytes(buf)
    a = np.frombuffer(buf, dtype=np.uint8).reshape(itemsize, -1)
    return a.T.tobytes()


def order0_bytes(buf: bytes) -> float:
    """The order-0 (byte histogram) entropy of `buf`, in bytes: what an ideal coder of independent
    bytes would write; quantized weight codes are close to independent."""
    if not buf:
        return 0.0
    counts = np.bincount(np.frombuffer(buf, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / len(buf)
    return float(-(p * np.log2(p)).sum() * len(buf) / 8.0)


def available_codecs() -> list[str]:
    """Codecs usable here, in CODECS order (brotli only when installed)."""
    return [n for n in CODECS if n != "brotli" or importlib.util.find_spec("brotli") is not None]


def compress_smallest(data: bytes, candidates: list[str] | None = None) -> tuple[str, int, bytes]:
    """(codec, level, stream) of the smallest output among `candidates` at their strongest levels;
    ties go to the earlier codec in CODECS order, so the choice is deterministic."""
    names = available_codecs() if candidates is None else [get_codec(n).name for n in candidates]
    if not names:
        raise CodecError("no codec to choose from")
    with ThreadPoolExecutor(max_workers=len(names)) as pool:  # the codecs release the GIL
        blobs = list(pool.map(lambda n: compress(data, n), names))
    best = min(range(len(names)), key=lambda i: (len(blobs[i]), i))
    return names[best], resolve_level(names[best]), blobs[best]
