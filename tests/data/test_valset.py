"""The validation set as scored: tokens, per-target bytes (tables or sidecar), refused mismatches."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from loopgolf.data.luts import build_byte_luts, target_bytes
from loopgolf.data.shards import ShardError, load_shard
from loopgolf.data.tokenizer import TokenizerError, load_tokenizer
from loopgolf.data.transform import sidecar_path
from loopgolf.data.valset import ValSet, check_tokenizer, load_val_set


def test_bytes_come_from_the_tables(tiny_shards):
    vs = load_val_set(str(tiny_shards["dir"] / "*_val_*.bin"), tiny_shards["tokenizer"], 512)
    tokens = np.asarray(load_shard(tiny_shards["val"][0]))
    luts = build_byte_luts(load_tokenizer(tiny_shards["tokenizer"]), 512)
    assert np.array_equal(vs.tokens, tokens) and vs.bytes_source == "tables"
    assert vs.target_bytes[0] == 0
    assert vs.target_bytes[1:].tolist() == target_bytes(luts, tokens[:-1], tokens[1:]).tolist()
    # a document's targets sum to its decoded UTF-8 bytes
    sp = load_tokenizer(tiny_shards["tokenizer"])
    bos = np.flatnonzero(tokens == 1)
    doc = sp.decode(tokens[bos[0] + 1:bos[1]].astype(int).tolist())
    assert vs.target_bytes[bos[0] + 1:bos[1]].sum() == len(doc.encode("utf-8"))


def test_tokenizer_other_than_the_manifests_is_refused(tiny_shards, tmp_path):
    for p in tiny_shards["val"]:
        shutil.copy(p, tmp_path / p.name)
    tok = tiny_shards["tokenizer"]
    good = hashlib.sha256(open(tok, "rb").read()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"tokenizer_sha256": good}))
    assert len(load_val_set(str(tmp_path / "*_val_*.bin"), tok, 512)) > 0
    (tmp_path / "manifest.json").write_text(json.dumps({"tokenizer_sha256": "ab" * 32, "tokenizer": "/x/v400.model"}))
    with pytest.raises(TokenizerError, match="manifest.json records tokenizer_sha256 ababab"):
        load_val_set(str(tmp_path / "*_val_*.bin"), tok, 512)
    with pytest.raises(TokenizerError, match="another tokenizer"):
        check_tokenizer(sorted(tmp_path.glob("*.bin")), tok)


@pytest.fixture(scope="module")
def case_shards(tmp_path_factory, make_docs, make_case_shards):
    d = tmp_path_factory.mktemp("case_val")
    docs = make_docs(30, seed=9) + ["ALL CAPS and iPhone NASA McDonald"]
    tok = make_case_shards(d, docs)
    return d, tok, docs, sorted(d.glob("*_val_*.bin"))


def test_case_transformed_shards_count_original_bytes(case_shards):
    d, tok, docs, paths = case_shards
    vs = load_val_set(str(d / "*_val_*.bin"), tok, 512)
    assert vs.bytes_source == "sidecar"
    assert int(vs.target_bytes.sum()) == sum(len(x.encode("utf-8")) for x in docs)
    tables = ValSet.from_luts(vs.tokens, build_byte_luts(load_tokenizer(tok), 512))
    assert tables.target_bytes.sum() > vs.target_bytes.sum()  # operator pieces counted as 3 bytes


def test_transformed_shards_without_sidecar_are_refused(case_shards, tmp_path):
    d, tok, docs, paths = case_shards
    for p in paths:
        shutil.copy(p, tmp_path / p.name)
    with pytest.raises(ShardError, match="reserves the 'case' transform's operator.*sidecar"):
        load_val_set(str(tmp_path / "*_val_*.bin"), tok, 512)
    (sidecar_path(tmp_path / paths[0].name)).parent.mkdir()
    shutil.copy(sidecar_path(paths[0]), sidecar_path(tmp_path / paths[0].name))
    assert load_val_set(str(tmp_path / "*_val_*.bin"), tok, 512).bytes_source == "sidecar"


def test_manifest_transform_without_sidecar_is_refused(tiny_shards, tmp_path):
    for p in tiny_shards["val"]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "manifest.json").write_text(json.dumps({"transform": "case"}))
    with pytest.raises(ShardError, match="records transform 'case'"):
        load_val_set(str(tmp_path / "*_val_*.bin"), tiny_shards["tokenizer"], 512)


def test_valset_shapes_are_checked():
    with pytest.raises(ValueError, match="3 byte counts for 4 tokens"):
        ValSet(np.zeros(4, np.uint16), np.zeros(3, np.int64))
