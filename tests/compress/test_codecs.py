"""Codecs: round trips, default levels, the output-size guard, corrupt streams, byte shuffling."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopgolf.compress.codecs import (
    CODECS,
    CodecError,
    compress,
    decompress,
    order0_bytes,
    resolve_level,
    shuffle_bytes,
    unshuffle_bytes,
)

HAVE_BROTLI = importlib.util.find_spec("brotli") is not None  # optional: the `lab` extra
ALL_CODECS = [c if c != "brotli" else pytest.param(c, marks=pytest.mark.skipif(
    not HAVE_BROTLI, reason="brotli not installed (pip install brotli)")) for c in sorted(CODECS)]
SAMPLES = [b"", b"x", bytes(range(256)) * 40, os.urandom(5000), b"\0" * 100_000]
CHEAP = {"zlib": 1, "zstd": 1, "lzma": 0, "brotli": 0}  # fast levels to build test streams


@pytest.mark.parametrize("codec", ALL_CODECS)
@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"{len(d)}B")
def test_round_trip(codec: str, data: bytes) -> None:
    for level in (-1, CHEAP[codec]):
        packed = compress(data, codec, level)
        assert decompress(packed, codec, max_size=len(data)) == data
    assert compress(data, codec) == compress(data, codec)


def test_default_levels_are_the_strongest() -> None:
    assert {c: resolve_level(c) for c in CODECS} == {"zlib": 9, "zstd": 22, "lzma": 9, "brotli": 11}
    with pytest.raises(CodecError, match="out of range"):
        compress(b"abc", "zlib", 10)
    with pytest.raises(CodecError, match="unknown codec"):
        compress(b"abc", "gzip")
    with pytest.raises(CodecError, match="unknown codec"):
        decompress(b"abc", "gzip", 10)


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_size_guard(codec: str) -> None:
    data = b"\0" * 4_000_000
    packed = compress(data, codec, CHEAP[codec])
    assert decompress(packed, codec, max_size=len(data)) == data
    for cap in (len(data) - 1, 1000, 0):
        with pytest.raises(CodecError, match="cap|bomb"):
            decompress(packed, codec, max_size=cap)


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_corrupt_and_truncated_streams(codec: str) -> None:
    data = os.urandom(3000) + b"abc" * 3000
    packed = compress(data, codec, CHEAP[codec])
    with pytest.raises(CodecError):
        decompress(packed[: len(packed) // 2], codec, max_size=len(data))
    with pytest.raises(CodecError):
        decompress(b"definitely not a stream of any codec", codec, max_size=len(data))
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF
    try:
        out = decompress(bytes(flipped), codec, max_size=len(data))
    except CodecError:
        return
    assert out != data  # a codec without its own checksum may inflate garbage; never silently equal


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_trailing_data_refused(codec: str) -> None:
    packed = compress(b"hello" * 50, codec)
    with pytest.raises(CodecError, match="trailing"):
        decompress(packed + b"junk", codec, max_size=10_000)


def test_missing_brotli_has_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "brotli", None)  # makes `import brotli` raise ImportError
    with pytest.raises(CodecError, match="pip install brotli"):
        compress(b"abc", "brotli")
    with pytest.raises(CodecError, match="pip install brotli"):
        decompress(b"abc", "brotli", 10)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), itemsize=st.sampled_from([1, 2, 4, 8]))
def test_shuffle_round_trip(data: bytes, itemsize: int) -> None:
    data = data[: len(data) - len(data) % itemsize]
    shuffled = shuffle_bytes(data, itemsize)
    assert len(shuffled) == len(data) and unshuffle_bytes(shuffled, itemsize) == data


def test_shuffle_layout_and_errors() -> None:
    assert shuffle_bytes(b"\x01\x02\x03\x04\x05\x06", 2) == b"\x01\x03\x05\x02\x04\x06"
    with pytest.raises(ValueError):
        shuffle_bytes(b"abc", 2)
    with pytest.raises(ValueError):
        unshuffle_bytes(b"abc", 0)


def test_order0_bytes_known_answers() -> None:
    """Entropy of the byte histogram: 4 equally frequent values = 2 bits a byte; one value = 0."""
    assert order0_bytes(bytes([0, 1, 2, 3]) * 250) == pytest.approx(250.0)
    assert order0_bytes(b"\x07" * 1000) == 0.0 and order0_bytes(b"") == 0.0
    data = bytes([0] * 750 + [1] * 250)
    assert order0_bytes(data) == pytest.approx(1000 * (0.75 * 0.415037 + 0.25 * 2) / 8, rel=1e-5)
