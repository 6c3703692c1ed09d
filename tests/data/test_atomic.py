"""Atomic writes: the target is either the old file or the whole new one; no temp file survives."""
from __future__ import annotations

import os
import stat

import pytest

from loopgolf.data import atomic
from loopgolf.data.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_write_bytes_creates_parents_and_replaces_whole(tmp_path) -> None:
    target = tmp_path / "sub" / "dir" / "f.bin"
    assert atomic_write_bytes(target, b"x" * 1000) == target
    assert target.read_bytes() == b"x" * 1000
    atomic_write_bytes(target, b"short")
    assert target.read_bytes() == b"short"  # replaced, not overwritten in place (no stale tail)
    assert listing(target.parent) == ["f.bin"]


def test_write_text_is_utf8_without_newline_translation(tmp_path) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(str(target), "é\r\nb\n")
    assert target.read_bytes() == "é\r\nb\n".encode("utf-8")


def test_exception_in_block_keeps_old_content_and_removes_temp(tmp_path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target) as f:
            f.write(b"new partial")
            f.flush()
            assert len(listing(tmp_path)) == 2  # the temp sibling exists during the write
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["f.bin"]


def test_keyboard_interrupt_also_cleans_up(tmp_path) -> None:
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise KeyboardInterrupt
    assert listing(tmp_path) == []


def test_failing_replace_keeps_old_content_and_removes_temp(tmp_path, monkeypatch) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["f.bin"]


def test_temp_file_is_a_hidden_sibling(tmp_path, monkeypatch) -> None:
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    atomic_write_bytes(tmp_path / "f.bin", b"1")
    (src, dst), = seen
    assert dst == str(tmp_path / "f.bin")
    assert os.path.dirname(src) == str(tmp_path)
    assert os.path.basename(src).startswith(".f.bin.") and src.endswith(".tmp")


def test_permissions_new_file_0644_existing_mode_kept(tmp_path) -> None:
    new = atomic_write_bytes(tmp_path / "new", b"1")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    old = tmp_path / "old"
    old.write_bytes(b"0")
    os.chmod(old, 0o600)
    atomic_write_bytes(old, b"1")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and old.read_bytes() == b"1"


def test_bad_mode_is_refused_before_touching_disk(tmp_path) -> None:
    with pytest.raises(ValueError, match="use 'wb' or 'w'"):
        with atomic_open(tmp_path / "x" / "f", "ab"):
            pass
    assert listing(tmp_path) == []
