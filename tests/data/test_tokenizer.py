"""Tokenizer training with the challenge's settings, loading, and errors for damaged model files."""
from __future__ import annotations

import hashlib

import pytest
import sentencepiece as spm

from loopgolf.data.tokenizer import BOS_ID, TokenizerError, load_tokenizer, train_tokenizer


def test_trained_model_layout(tiny_sp_model):
    sp = load_tokenizer(tiny_sp_model)
    assert tiny_sp_model.suffix == ".model" and tiny_sp_model.with_suffix(".vocab").is_file()
    assert 300 < sp.vocab_size() <= 400
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, BOS_ID, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256
    assert sp.piece_to_id("\u2581") != sp.unk_id()
    # split_digits: every digit is its own piece; add_dummy_prefix=False: no space added at the start.
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]
    assert not sp.id_to_piece(sp.encode("the river")[0]).startswith("\u2581")
    vocab_lines = tiny_sp_model.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == sp.vocab_size() and vocab_lines[1].startswith("<s>\t")
    assert not [p for p in tiny_sp_model.parent.iterdir() if p.name.startswith(".")]


def test_training_is_deterministic(tmp_path, make_docs):
    docs = make_docs(120, seed=5)
    a = train_tokenizer(docs, 320, tmp_path / "a")
    b = train_tokenizer(iter(docs), 320, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    c = train_tokenizer(docs + ["ignored extra document"] * 50, 320, tmp_path / "c", max_docs=120)
    assert c.read_bytes() == a.read_bytes()


def test_training_failure_is_a_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_tokenizer(["some text here"], 100, tmp_path / "small")
    assert not list(tmp_path.glob("small*"))


def test_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match=r"nope\.model: tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(TokenizerError, match="directory"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "text"])
def test_corrupt_model_file(tmp_path, tiny_sp_model, damage):
    data = tiny_sp_model.read_bytes()
    broken = {
        "truncate": data[: len(data) // 3],
        "garbage": bytes((b * 7 + 3) % 256 for b in data[:4096]),
        "empty": b"",
        "text": b"this is not a model\n",
    }[damage]
    path = tmp_path / "bad.model"
    path.write_bytes(broken)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert str(path) in str(e.value) and "again" in str(e.value)


def test_loaded_model_matches_sentencepiece(tiny_sp_model):
    ours = load_tokenizer(tiny_sp_model)
    ref = spm.SentencePieceProcessor(model_file=str(tiny_sp_model))
    text = "Café 123 über the river 漢字 🙂"
    assert ours.encode(text) == ref.encode(text)


def test_bit_flip_caught_by_expected_digest(tmp_path, tiny_sp_model):
    data = bytearray(tiny_sp_model.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    assert load_tokenizer(tiny_sp_model, expected_sha256=digest).vocab_size() > 0
    i = bytes(data).index("\u2581the".encode())  # inside a piece string: still parses
    data[i + 3] ^= 0x01
    path = tmp_path / "flipped.model"
    path.write_bytes(bytes(data))
    load_tokenizer(path)
    with pytest.raises(TokenizerError, match=r"flipped\.model: SHA-256 .* differs"):
        load_tokenizer(path, expected_sha256=digest)


def test_selftest_passes_a_good_tokenizer_and_fails_one_without_a_space_piece(tmp_path, tiny_sp_model):
    import random

    from loopgolf.data.tokenizer import selftest_tokenizer

    assert selftest_tokenizer(tiny_sp_model)["ok"]
    rng = random.Random(0)
    words = "alpha beta gamma delta river city music garden".split()
    no_spaces = ["-".join(rng.choice(words) for _ in range(30)) for _ in range(300)]
    bad = train_tokenizer(no_spaces, 320, tmp_path / "nospace")
    report = selftest_tokenizer(bad)
    assert not report["ok"]
    assert any("no standalone" in p and "#897" in p for p in report["problems"])
    # "The quick brown fox ...": 8 spaces each counted as 3 byte-fallback bytes
    assert any("count 60 bytes but the normalized text has 44" in p for p in report["problems"])
