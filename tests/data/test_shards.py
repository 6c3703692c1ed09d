"""Shard format: round trip, every corruption caught with a message naming the file, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest

from loopgolf.data import shards
from loopgolf.data.atomic import atomic_open, atomic_write_bytes
from loopgolf.data.shards import (HEADER_BYTES, MAGIC, ShardError, check_vocab, list_shards,
                                  load_shard, read_header, write_shard)


def test_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([1, 0, 65535, 300, 7], dtype=np.int64)
    path = write_shard(tmp_path / "a.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * len(tokens)
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [MAGIC, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    assert read_header(path) == 5
    mm = load_shard(path)
    assert mm.dtype == np.uint16 and mm.tolist() == tokens.tolist()
    with pytest.raises(ValueError):
        mm[0] = 3  # read-only memmap
    assert load_shard(path, mmap=False).tolist() == tokens.tolist()


def test_lists_and_empty_shards(tmp_path):
    write_shard(tmp_path / "e.bin", [])
    assert read_header(tmp_path / "e.bin") == 0 and load_shard(tmp_path / "e.bin").size == 0
    write_shard(tmp_path / "l.bin", [[1, 2], [3, 4]])  # any shape is flattened
    assert load_shard(tmp_path / "l.bin").tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("cut", [1, 2, 1500])
def test_truncated_file(tmp_path, cut):
    path = write_shard(tmp_path / "t.bin", np.arange(1024))
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ShardError, match=r"t\.bin.*(truncated|shorter).*loopgolf data tokenize"):
        load_shard(path)


def test_truncated_message_names_sizes(tmp_path):
    path = write_shard(tmp_path / "x.bin", np.arange(1024))
    path.write_bytes(path.read_bytes()[:2046])
    with pytest.raises(ShardError) as e:
        read_header(path)
    assert "x.bin: file is 2046 bytes but its header says 1024 tokens (expected 3072 bytes)" in str(e.value)


def test_padded_file(tmp_path):
    path = write_shard(tmp_path / "p.bin", np.arange(10))
    with open(path, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ShardError, match="padded"):
        read_header(path)


def test_bit_flipped_magic(tmp_path):
    path = write_shard(tmp_path / "m.bin", np.arange(10))
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"m\.bin: bad magic"):
        load_shard(path)


def test_wrong_version_and_negative_count(tmp_path):
    path = write_shard(tmp_path / "v.bin", np.arange(10))
    raw = bytearray(path.read_bytes())
    raw[4:8] = np.array([2], "<i4").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="version 2"):
        read_header(path)
    raw[4:8] = np.array([1], "<i4").tobytes()
    raw[8:12] = np.array([-3], "<i4").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="-3 tokens"):
        read_header(path)


def test_missing_and_tiny_files(tmp_path):
    with pytest.raises(ShardError, match="no such shard"):
        read_header(tmp_path / "nope.bin")
    (tmp_path / "s.bin").write_bytes(b"abc")
    with pytest.raises(ShardError, match="shorter than the 1024-byte header"):
        read_header(tmp_path / "s.bin")


@pytest.mark.parametrize("bad", [[-1, 2], [65536], [1 << 40]])
def test_values_out_of_range(tmp_path, bad):
    with pytest.raises(ShardError, match="0..65535"):
        write_shard(tmp_path / "r.bin", np.array(bad))
    assert list(tmp_path.iterdir()) == []


def test_non_integer_tokens_refused(tmp_path):
    with pytest.raises(ShardError, match="integers"):
        write_shard(tmp_path / "f.bin", np.array([1.5]))


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    write_shard(target, [1, 2, 3])
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shards.np, "ascontiguousarray", boom)  # fails after the header is written
    with pytest.raises(OSError, match="disk full"):
        write_shard(target, [4, 5, 6, 7])
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "b.bin") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    atomic_write_bytes(tmp_path / "sub" / "c.bin", b"xyz")
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"xyz"


def test_list_shards(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / f"d_train_{i:06d}.bin", [i])
    assert [p.name for p in list_shards(str(tmp_path / "d_train_*.bin"))] == [
        "d_train_000000.bin", "d_train_000001.bin", "d_train_000002.bin"]
    with pytest.raises(ShardError, match="no shard files match .*d_val_"):
        list_shards(str(tmp_path / "d_val_*.bin"))


def test_check_vocab(tmp_path):
    write_shard(tmp_path / "a_000000.bin", [1, 5, 1023])
    write_shard(tmp_path / "a_000001.bin", [1, 1500, 3])
    check_vocab([tmp_path / "a_000000.bin"], 1024)
    check_vocab(str(tmp_path / "a_*.bin"), 2048)
    with pytest.raises(ShardError) as e:
        check_vocab(str(tmp_path / "a_*.bin"), 1024)
    msg = str(e.value)
    assert "a_000001.bin" in msg and "token id 1500" in msg and "vocab is 1024" in msg
    assert "another tokenizer" in msg
