"""`data info`: counts, bytes per token and the checks, on shards with hand-counted answers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from loopgolf.data.info import find_shards, format_info, shard_info
from loopgolf.data.prepare import tokenize_documents
from loopgolf.data.shards import ShardError, write_shard
from loopgolf.data.tokenizer import load_tokenizer


def test_counts_match_the_documents(tiny_shards):
    info = shard_info(tiny_shards["dir"], tiny_shards["tokenizer"])
    sp = load_tokenizer(tiny_shards["tokenizer"])
    train = info["splits"]["train"]
    assert train["documents"] == len(tiny_shards["train_docs"])
    assert train["tokens"] == sum(1 + len(sp.encode(d)) for d in tiny_shards["train_docs"])
    assert train["bytes"] == sum(len(sp.decode(sp.encode(d)).encode()) for d in tiny_shards["train_docs"])
    assert train["bytes_per_token"] == round(train["bytes"] / train["tokens"], 4)
    assert train["text_tokens"] == train["tokens"] - train["documents"]
    assert info["ok"], format_info(info)
    assert {c["check"] for c in info["checks"]} >= {"headers", "tokenizer_selftest", "train_val_disjoint",
                                                    "train_vocab", "val_starts_with_bos"}
    json.dumps(info)


def test_overlap_across_shard_boundaries_is_found(tmp_path, tiny_sp_model, make_docs):
    train, val = make_docs(50, seed=1), make_docs(5, seed=2)
    tokenize_documents(train[:20] + [val[3]] + train[20:], tiny_sp_model, tmp_path, "train",
                       shard_tokens=300, workers=1, progress=False)
    tokenize_documents(val, tiny_sp_model, tmp_path, "val", workers=1, progress=False)
    info = shard_info(tmp_path, tiny_sp_model)
    check = next(c for c in info["checks"] if c["check"] == "train_val_disjoint")
    assert not check["ok"] and check["detail"].startswith("1 train documents")
    assert info["splits"]["train"]["documents"] == 51 and not info["ok"]


def test_wrong_tokenizer_and_broken_shard(tmp_path, tiny_shards):
    d = tmp_path / "s"
    shutil.copytree(tiny_shards["dir"], d)
    write_shard(d / "x_val_000001.bin", np.array([1, 5, 450]))  # id 450 >= tiny vocab 400
    info = shard_info(d, tiny_shards["tokenizer"])
    assert not next(c for c in info["checks"] if c["check"] == "val_vocab")["ok"]
    (d / "x_val_000001.bin").write_bytes(b"\0" * 10)
    info = shard_info(d, tiny_shards["tokenizer"])
    assert not info["ok"] and "shorter than the 1024-byte header" in info["checks"][0]["detail"]
    with pytest.raises(ShardError, match="no shard files"):
        find_shards(tmp_path / "empty*")
