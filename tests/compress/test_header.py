"""Header validation: a well-formed header passes (v1 normalized to v2), every crafted field fails."""
from __future__ import annotations

import copy

import pytest

from loopgolf.compress.header import MAX_PAYLOAD_BYTES, Malformed, check_header, get

SHA = "ab" * 32


def v2_header() -> dict:
    """Two tensors over two streams: a fp16 (2,3) -> 12 bytes in stream 0; b int8_row (2,4) ->
    q 8 bytes in stream 1, scale 4 bytes in stream 0 after a's data."""
    return {
        "meta": {"note": "x"},
        "payload_raw_len": 24,
        "payload_sha256": SHA,
        "streams": [
            {"name": "floats", "codec": "zlib", "level": 9, "shuffle": 2, "raw_len": 16, "nbytes": 7},
            {"name": "codes", "codec": "lzma", "level": 6, "shuffle": 1, "raw_len": 8, "nbytes": 5},
        ],
        "tensors": [
            {"name": "a", "scheme": "fp16", "dtype": "float32", "shape": [2, 3], "parts": [
                {"name": "data", "dtype": "float16", "shape": [2, 3], "stream": 0, "offset": 0,
                 "nbytes": 12}]},
            {"name": "b", "scheme": "int8_row", "dtype": "float32", "shape": [2, 4], "parts": [
                {"name": "q", "dtype": "int8", "shape": [2, 4], "stream": 1, "offset": 0, "nbytes": 8},
                {"name": "scale", "dtype": "float16", "shape": [2], "stream": 0, "offset": 12,
                 "nbytes": 4}]},
        ],
    }


def v1_header() -> dict:
    h = v2_header()
    del h["streams"]
    h["codec"], h["level"] = "zlib", 9
    offset = 0
    for t in h["tensors"]:
        for p in t["parts"]:
            del p["stream"]
            p["offset"] = offset
            offset += p["nbytes"]
    return h


def test_valid_v2_header_passes_unchanged() -> None:
    h = v2_header()
    out = check_header(copy.deepcopy(h), version=2, payload_len=12)
    assert out == h
    assert [p["stream"] for t in out["tensors"] for p in t["parts"]] == [0, 1, 0]


def test_v1_header_is_normalized_to_one_stream() -> None:
    out = check_header(v1_header(), version=1, payload_len=30)
    assert out["streams"] == [{"name": "payload", "codec": "zlib", "level": 9, "shuffle": 1,
                               "raw_len": 24, "nbytes": 30}]
    assert [(p["stream"], p["offset"]) for t in out["tensors"] for p in t["parts"]] == [
        (0, 0), (0, 12), (0, 20)]


def test_v1_unknown_codec_fails() -> None:
    h = v1_header()
    h["codec"] = "gzip"
    with pytest.raises(Malformed, match="unknown codec 'gzip'"):
        check_header(h, version=1, payload_len=30)


def _mutate(path: tuple, value):
    h = v2_header()
    node = h
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return h


_DELETE = object()

BAD = [
    (("meta",), [], "header.meta must be dict"),
    (("meta",), _DELETE, "header: missing 'meta'"),
    (("payload_raw_len",), True, "payload_raw_len must be int, got bool"),
    (("payload_raw_len",), -1, "out of range"),
    (("payload_raw_len",), MAX_PAYLOAD_BYTES + 1, "exceeds"),
    (("payload_sha256",), "AB" * 32, "64 lowercase hex"),
    (("payload_sha256",), "ab" * 31, "64 lowercase hex"),
    (("streams", 0, "codec"), "rar", r"streams\[0\]: unknown codec"),
    (("streams", 0, "shuffle"), 0, "must be in 1..16"),
    (("streams", 0, "shuffle"), 17, "must be in 1..16"),
    (("streams", 0, "shuffle"), 3, "not a multiple of shuffle"),
    (("streams", 1, "nbytes"), 6, "compressed bytes, the payload has 12"),
    (("streams", 1, "raw_len"), 9, "raw bytes, payload_raw_len is 24"),
    (("tensors", 1, "name"), "a", "names not sorted or duplicated"),
    (("tensors", 0, "scheme"), "int9_row", "unknown scheme"),
    (("tensors", 0, "dtype"), "complex64", "unsupported dtype"),
    (("tensors", 0, "shape"), [2, -3], "bad dimension"),
    (("tensors", 0, "shape"), [1] * 33, "list of <= 32 ints"),
    (("tensors", 1, "shape"), [8], r"tensors\[1\]: scheme int8_row needs a 2-D tensor"),
    (("tensors", 1, "parts", 1, "name"), "scales", r"parts must be \['q', 'scale'\]"),
    (("tensors", 0, "parts", 0, "dtype"), "float32", "dtype/shape differ from scheme"),
    (("tensors", 0, "parts", 0, "stream"), 2, "stream 2 does not exist"),
    (("tensors", 1, "parts", 1, "offset"), 11, "parts must tile payload"),
    (("tensors", 1, "parts", 1, "nbytes"), 8, "nbytes disagrees"),
]


@pytest.mark.parametrize("path,value,msg", BAD, ids=[f"{'.'.join(map(str, p))}={v!r}"[:60]
                                                       for p, v, _ in BAD])
def test_crafted_field_is_malformed(path, value, msg) -> None:
    with pytest.raises(Malformed, match=msg):
        check_header(_mutate(path, value), version=2, payload_len=12)


def test_stream_not_fully_covered_fails() -> None:
    h = v2_header()
    h["streams"][0]["raw_len"] = 18  # 2 bytes of stream 0 that no part claims
    h["streams"][1]["raw_len"] = 6
    h["tensors"][1]["parts"][0]["stream"] = 0  # keep totals at 24 but break the tiling
    with pytest.raises(Malformed, match="parts must tile payload"):
        check_header(h, version=2, payload_len=12)
    h = v2_header()
    h["payload_raw_len"] = 26
    h["streams"][0]["raw_len"] = 18
    with pytest.raises(Malformed, match="parts cover 16 of 18 bytes of stream 0"):
        check_header(h, version=2, payload_len=12)


def test_part_past_its_stream_fails() -> None:
    h = v2_header()
    h["streams"][0]["raw_len"], h["streams"][1]["raw_len"] = 14, 10  # scale ends at 16 > 14
    with pytest.raises(Malformed, match="extends past its stream"):
        check_header(h, version=2, payload_len=12)


def test_non_object_header_fails() -> None:
    with pytest.raises(Malformed, match="JSON object"):
        check_header([1, 2], version=2, payload_len=0)


def test_get_checks_type_and_range() -> None:
    assert get({"n": 5}, "n", int, "w") == 5
    with pytest.raises(Malformed, match="w.n must be int, got str"):
        get({"n": "5"}, "n", int, "w")
    with pytest.raises(Malformed, match="w.n=4611686018427387904 is out of range"):
        get({"n": 1 << 62}, "n", int, "w")
    with pytest.raises(Malformed, match="w: missing 'n'"):
        get("not a dict", "n", int, "w")
