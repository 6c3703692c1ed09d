"""Lossless text transforms and the per-token byte sidecar that keeps bpb in original bytes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopgolf.data.luts import build_byte_luts, target_bytes
from loopgolf.data.prepare import tokenize_documents
from loopgolf.data.shards import load_shard
from loopgolf.data.tokenizer import BOS_ID, load_tokenizer, train_tokenizer
from loopgolf.data.transform import (ALLCAPS, CAPNEXT, ESC, TITLE, CaseTransform, IdentityTransform,
                                     check_roundtrip, get_transform, load_byte_sidecar,
                                     piece_bytes_table, sidecar_path, token_byte_counts)


def test_case_transform_known_answers():
    ct = CaseTransform()
    assert ct.encode("Hello NASA iPhone McDo a") == (
        f"{TITLE}hello {ALLCAPS}nasa i{CAPNEXT}phone {TITLE}mc{CAPNEXT}do a")
    assert ct.encode(f"x{TITLE}y") == f"x{ESC}{TITLE}y"
    assert ct.weights(f"{TITLE}ab{ESC}{TITLE}é") == [0, 1, 1, 0, 3, 2]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZbY é日 \n-") + [TITLE, ALLCAPS, CAPNEXT, ESC]), max_size=40))
def test_case_transform_is_lossless_and_weights_sum_to_bytes(text):
    ct = CaseTransform()
    enc = ct.encode(text)
    assert ct.decode(enc) == text
    assert sum(ct.weights(enc)) == len(text.encode("utf-8"))


def test_identity_sidecar_equals_byte_tables(tiny_sp_model, make_docs):
    sp = load_tokenizer(tiny_sp_model)
    luts = build_byte_luts(sp, sp.vocab_size())
    table = piece_bytes_table(sp)
    for doc in make_docs(20, seed=3):  # accents: byte-fallback pieces count 1 byte each, as in the tables
        ids = [BOS_ID, *sp.encode(doc)]
        side = token_byte_counts(ids[1:], table, IdentityTransform())
        assert side.tolist() == [0, *target_bytes(luts, ids[:-1], ids[1:]).tolist()]


@pytest.fixture(scope="module")
def case_tokenizer(tmp_path_factory, make_docs):
    ct = CaseTransform()
    out = tmp_path_factory.mktemp("case") / "case"
    return train_tokenizer([ct.encode(d) for d in make_docs(300)], 420, out,
                           user_defined_symbols=ct.reserved)


def test_tokenize_with_transform_writes_a_sidecar_summing_to_original_bytes(tmp_path, case_tokenizer, make_docs):
    docs = make_docs(60, seed=5) + ["ALL CAPS TEXT and iPhone, x\ue001y"]
    sp = load_tokenizer(case_tokenizer)
    assert sp.piece_to_id(TITLE) > 3  # the operators are reserved pieces
    paths = tokenize_documents(docs, case_tokenizer, tmp_path, "val", shard_tokens=1000, workers=1,
                               progress=False, transform="case")
    assert len(paths) > 1 and all(sidecar_path(p).is_file() for p in paths)
    side = load_byte_sidecar(paths)
    tokens = np.concatenate([load_shard(p) for p in paths])
    assert side.shape == tokens.shape
    assert int(side.sum()) == sum(len(d.encode("utf-8")) for d in docs)
    assert side[tokens == BOS_ID].sum() == 0
    assert side[tokens == sp.piece_to_id(TITLE)].sum() == 3  # operators 0; the escaped literal 3
    # the tables would count each 3-byte operator piece: more bytes than the text has
    luts = build_byte_luts(sp, sp.vocab_size())
    assert int(target_bytes(luts, tokens[:-1], tokens[1:]).sum()) > int(side.sum())
    # a plain re-run removes the now-stale sidecars
    tokenize_documents(docs, case_tokenizer, tmp_path, "val", shard_tokens=1000, workers=1, progress=False)
    assert load_byte_sidecar(paths) is None


def test_sidecar_is_the_same_with_worker_processes(tmp_path, case_tokenizer, make_docs):
    docs = make_docs(40, seed=9)
    a = tokenize_documents(docs, case_tokenizer, tmp_path / "a", "val", workers=1, progress=False, transform="case")
    b = tokenize_documents(docs, case_tokenizer, tmp_path / "b", "val", workers=2, progress=False, transform="case")
    assert sidecar_path(a[0]).read_bytes() == sidecar_path(b[0]).read_bytes()


def test_bad_names_and_roundtrip_report():
    with pytest.raises(ValueError, match="unknown text transform 'nope'"):
        get_transform("nope")
    assert check_roundtrip(CaseTransform(), ["Hello World", "\ue004"]) == []
