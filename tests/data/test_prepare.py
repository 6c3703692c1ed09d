"""Tokenizing into shards (worker-count independent, exact cuts) and the cached demo corpus."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from loopgolf.data import prepare
from loopgolf.data.luts import build_byte_luts, target_bytes
from loopgolf.data.corpus import CorpusError
from loopgolf.data.prepare import prepare_corpus, tokenize_documents
from loopgolf.data.shards import list_shards, load_shard, read_header
from loopgolf.data.tokenizer import BOS_ID, load_tokenizer


def _stream(paths):
    return np.concatenate([load_shard(p) for p in paths])


def test_shards_hold_bos_plus_pieces(tiny_shards):
    sp = load_tokenizer(tiny_shards["tokenizer"])
    expected = [t for d in tiny_shards["train_docs"] for t in (BOS_ID, *sp.encode(d))]
    assert _stream(tiny_shards["train"]).tolist() == expected
    assert [p.name for p in tiny_shards["train"]][:2] == ["fineweb_train_000000.bin",
                                                           "fineweb_train_000001.bin"]
    assert len(tiny_shards["val"]) == 1


def test_cut_at_exactly_shard_tokens_and_docs_span_shards(tiny_shards):
    paths = tiny_shards["train"]
    sizes = [read_header(p) for p in paths]
    assert len(paths) > 2 and all(n == 4096 for n in sizes[:-1]) and 0 < sizes[-1] <= 4096
    assert any(load_shard(p)[0] != BOS_ID for p in paths[1:]), "no document spans two shards"
    sp = load_tokenizer(tiny_shards["tokenizer"])
    luts = build_byte_luts(sp, sp.vocab_size())
    s = _stream(paths).astype(np.int64)
    counted = int(target_bytes(luts, s[:-1], s[1:]).sum())
    raw = sum(len(sp.decode(sp.encode(d)).encode()) for d in tiny_shards["train_docs"])
    assert counted == raw, f"bytes over all shards: tables {counted}, decoded text {raw}"


def test_worker_count_does_not_change_bytes(tmp_path, tiny_sp_model, make_docs, monkeypatch):
    monkeypatch.setattr(prepare, "_CHUNK_DOCS", 8)  # many chunks, so the in-order window is used
    docs = make_docs(200, seed=9)
    one = tokenize_documents(docs, tiny_sp_model, tmp_path / "w1", "train", shard_tokens=1000,
                             workers=1, progress=False)
    two = tokenize_documents(iter(docs), tiny_sp_model, tmp_path / "w2", "train", shard_tokens=1000,
                             workers=2, progress=False)
    assert len(one) == len(two) > 2
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]


def test_stale_shards_are_removed_and_empty_input_refused(tmp_path, tiny_sp_model, make_docs):
    docs = make_docs(60)
    long = tokenize_documents(docs, tiny_sp_model, tmp_path, "val", shard_tokens=500, workers=1,
                              progress=False)
    short = tokenize_documents(docs[:5], tiny_sp_model, tmp_path, "val", shard_tokens=500,
                               workers=1, progress=False)
    assert len(long) > len(short)
    assert list_shards(str(tmp_path / "fineweb_val_*.bin")) == short
    with pytest.raises(ValueError, match="no documents"):
        tokenize_documents([], tiny_sp_model, tmp_path / "e", "val", workers=1, progress=False)


def test_prepare_corpus_manifest(tmp_path, tiny_sp_model, make_docs):
    docs = make_docs(300, seed=4)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + docs[:10]), encoding="utf-8")
    out = tmp_path / "out"
    m = prepare_corpus([src], tiny_sp_model, out, val_fraction=0.1, seed=0, shard_tokens=2000,
                       workers=1, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["overlap"] == 0 and m["duplicates_dropped"] == 10 and m["docs_read"] == 310
    tr, va = m["splits"]["train"], m["splits"]["val"]
    assert tr["docs"] + va["docs"] == 300 and va["docs"] > 0
    assert tr["tokens"] == sum(read_header(p) for p in list_shards(str(out / tr["pattern"])))
    assert va["tokens"] == _stream(list_shards(str(out / va["pattern"]))).size


def test_prepare_corpus_stages_shards_and_writes_the_manifest_last(tmp_path, tiny_sp_model, make_docs,
                                                                   monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("\n<|endoftext|>\n".join(make_docs(200, seed=5)), encoding="utf-8")
    out = tmp_path / "out"
    m = prepare_corpus([src], tiny_sp_model, out, val_fraction=0.1, shard_tokens=2000, workers=1,
                       progress=False)
    first = sorted(p.name for p in out.iterdir())
    assert first[-1] == "manifest.json" and not [n for n in first if n.startswith(".")]  # staging gone

    seen = []
    real = prepare.tokenize_documents

    def tokenize_then_fail(docs, tok, where, split, *a, **k):
        seen.append(Path(where))
        paths = real(docs, tok, where, split, *a, **k)
        if split == "train":
            raise KeyboardInterrupt  # interrupted after every shard of the new run was written
        return paths

    monkeypatch.setattr(prepare, "tokenize_documents", tokenize_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([src], tiny_sp_model, out, val_fraction=0.3, shard_tokens=500, workers=1,
                       progress=False)
    assert all(w.parent == out and w.name.startswith(".staging-") for w in seen)
    assert sorted(p.name for p in out.iterdir()) == first  # the old run, untouched, staging removed
    assert json.loads((out / "manifest.json").read_text()) == m


def test_empty_input_is_a_corpus_error(tmp_path, tiny_sp_model):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="empty.txt: no documents"):
        prepare_corpus([tmp_path / "empty.txt"], tiny_sp_model, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _children(pid: int) -> set[int]:
    """Processes whose parent is pid (from /proc)."""
    found = set()
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if d.name.isdigit() and int(fields[1]) == pid:
            found.add(int(d.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigkill_of_tokenize_leaves_no_workers_and_no_manifest(tmp_path, tiny_sp_model):
    src = tmp_path / "big.txt"
    line = "The river and the mountain, paper windows in the city of light 12345. " * 4
    src.write_text("\n<|endoftext|>\n".join(f"{i} {line}" for i in range(150_000)), encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "loopgolf", "data", "tokenize", "--input", str(src),
                             "--tokenizer", str(tiny_sp_model), "--out", str(out), "--workers", "2",
                             "--shard-tokens", "100000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        kids: set[int] = set()
        while time.time() < deadline and proc.poll() is None:
            kids |= _children(proc.pid)
            if len([k for k in kids if _alive(k)]) >= 2 and list(out.glob(".staging-*/*_train_*.bin")):
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(kids) >= 2, "tokenize ended before its workers were seen"
        kids |= _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.2)
        assert not [k for k in kids if _alive(k)], "worker processes outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "manifest.json").exists() and not list(out.glob("*.bin"))



class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream,shown", [(_Terminal, True), (io.StringIO, False)])
def test_progress_bar_only_on_a_terminal(tmp_path, tiny_sp_model, make_docs, monkeypatch, stream, shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    tokenize_documents(make_docs(50), tiny_sp_model, tmp_path, "train", workers=1, progress=True)
    assert ("tokenize train" in err.getvalue() and "50/50" in err.getvalue()) is shown, err.getvalue()
