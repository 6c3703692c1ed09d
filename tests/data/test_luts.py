"""Byte tables: the acceptance test that summed target bytes equal the text's UTF-8 bytes.

bpb = nats / (ln 2 * bytes), so a wrong byte count silently changes every reported score.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from loopgolf.data.luts import build_byte_luts, target_bytes
from loopgolf.data.tokenizer import BOS_ID, TokenizerError, check_tokenizer, load_tokenizer, train_tokenizer

# Texts the nmt_nfkc normalizer leaves unchanged: single spaces, no leading/trailing whitespace,
# no newlines, NFKC-stable characters. Accents and digits are in the training data; CJK and emoji
# are not, so they go through byte fallback.
UNCHANGED = [
    "Hello world",
    "The river 12345 flows past 7 gardens.",
    "café über naïve Zürich",
    "漢字 and 漢字漢字",
    "smile 🙂 and wink 😉🙂",
    "x",
    "1",
    "é",
    "🙂",
    "mixed: é ü 漢字 🙂 42, done!",
]
# Texts the normalizer changes: newlines, runs of spaces, leading/trailing space, tabs, NFKC forms.
CHANGED = [
    "line one\nline two\n\nline three",
    "  leading spaces and trailing  ",
    " one leading space",
    "tab\tseparated\tvalues",
    "double  spaces   here",
    "ﬁligature and ① circled and full-width ＡＢＣ",
]


@pytest.fixture(scope="module")
def sp(tiny_sp_model):
    return load_tokenizer(tiny_sp_model)


@pytest.fixture(scope="module")
def luts(sp):
    return build_byte_luts(sp, sp.vocab_size())


def _sequence_bytes(luts, sp, texts):
    ids = []
    for t in texts:
        ids += [BOS_ID, *sp.encode(t)]
    return int(target_bytes(luts, ids[:-1], ids[1:]).sum()), ids


@pytest.mark.parametrize("text", UNCHANGED + CHANGED)
def test_counted_bytes_equal_decoded_bytes(sp, luts, text):
    counted, ids = _sequence_bytes(luts, sp, [text])
    decoded = len(sp.decode(ids[1:]).encode("utf-8"))
    raw = len(text.encode("utf-8"))
    assert counted == decoded, (
        f"{text!r}: tables count {counted} bytes, decoded text has {decoded} (raw {raw})")
    if text in UNCHANGED:
        assert sp.decode(ids[1:]) == text, "fixture text is not normalizer-stable"
        assert counted == raw, f"{text!r}: tables count {counted} bytes, raw UTF-8 text has {raw}"


def test_byte_fallback_is_exercised(sp):
    pieces = [sp.id_to_piece(i) for i in sp.encode("漢字 🙂")]
    assert sum(p.startswith("<0x") for p in pieces) == 3 + 3 + 4, pieces


def test_leading_space_after_bos_is_not_counted(sp, luts):
    # " x" may normalize to "x"; whatever the pieces, a space right after BOS is never a byte.
    ids = [BOS_ID, sp.piece_to_id("\u2581"), *sp.encode("x")]
    assert int(target_bytes(luts, ids[:-1], ids[1:]).sum()) == 1
    ids = [BOS_ID, *sp.encode("a"), sp.piece_to_id("\u2581"), *sp.encode("x")]
    assert int(target_bytes(luts, ids[:-1], ids[1:]).sum()) == 3


def test_multi_document_sequences(sp, luts):
    rng = random.Random(0)
    texts = [rng.choice(UNCHANGED) for _ in range(30)]
    counted, ids = _sequence_bytes(luts, sp, texts)
    raw = sum(len(t.encode("utf-8")) for t in texts)
    assert counted == raw, f"30 documents: tables count {counted} bytes, raw UTF-8 text has {raw}"
    # Docs whose first piece carries a leading space ("▁word"): the space after BOS is not counted.
    spaced = [i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("\u2581")
              and len(sp.id_to_piece(i)) > 2 and not sp.is_control(i)][:3]
    assert len(spaced) == 3
    ids = [t for i in spaced for t in (BOS_ID, i)]
    expected = sum(len(sp.id_to_piece(i)[1:].encode()) for i in spaced)
    counted = int(target_bytes(luts, ids[:-1], ids[1:]).sum())
    assert counted == expected, f"counted {counted}, expected {expected} (no spaces after BOS)"
    # The same pieces after a word do carry their space: one extra byte each.
    ids = [BOS_ID, *sp.encode("a"), *spaced]
    counted = int(target_bytes(luts, ids[:-1], ids[1:]).sum())
    assert counted == 1 + expected + 3, f"counted {counted}, expected {1 + expected + 3}"


def test_torch_count_matches_numpy(sp, luts):
    counted, ids = _sequence_bytes(luts, sp, UNCHANGED + CHANGED)
    t = luts.to_torch("cpu")
    x = torch.tensor(ids[:-1]).view(1, -1)
    y = torch.tensor(ids[1:]).view(1, -1)
    out = t.count(x, y)
    assert out.dtype == torch.int64 and out.shape == y.shape
    assert int(out.sum()) == counted == int(target_bytes(t, x, y).sum())
    assert t.base_bytes.dtype == torch.int64 and t.is_boundary.dtype == torch.bool


def test_table_rules_and_padded_vocab(sp):
    luts = build_byte_luts(sp, 512)
    n = sp.vocab_size()
    assert len(luts) == 512
    assert luts.base_bytes.dtype == np.int16
    assert luts.is_boundary[n:].all() and not luts.base_bytes[n:].any()
    for i in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert luts.is_boundary[i] and luts.base_bytes[i] == 0 and not luts.has_leading_space[i]
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and (luts.base_bytes[byte_ids] == 1).all()
    space = sp.piece_to_id("\u2581")
    assert luts.has_leading_space[space] and luts.base_bytes[space] == 0
    with pytest.raises(ValueError):
        luts.base_bytes[5] = 9  # tables are frozen
    with pytest.raises(ValueError, match="outside the byte tables"):
        target_bytes(luts, [1], [512])


def test_vocab_smaller_than_tokenizer_is_refused(sp):
    msg = f"tokenizer has {sp.vocab_size()} pieces but model.vocab_size is 100"
    with pytest.raises(TokenizerError, match=msg):
        build_byte_luts(sp, 100)


def test_check_tokenizer_passes_good_model(sp):
    assert check_tokenizer(sp, UNCHANGED + CHANGED) == []


def test_check_tokenizer_flags_missing_space_piece(tmp_path):
    # Trained on text without spaces, the model has no "▁" piece: each space becomes the three
    # byte-fallback tokens of U+2581, counted as 3 bytes instead of 1 (challenge issue #897).
    rng = random.Random(0)
    docs = ["".join(rng.choice("abcdefgh") for _ in range(60)) for _ in range(100)]
    sp = load_tokenizer(train_tokenizer(docs, 300, tmp_path / "nospace"))
    text = "abc def"
    problems = check_tokenizer(sp, [text])
    assert any("standalone" in p and "#897" in p for p in problems), problems
    luts = build_byte_luts(sp, sp.vocab_size())
    counted, _ = _sequence_bytes(luts, sp, [text])
    assert counted == len(text.encode()) + 2, f"counted {counted}, raw {len(text.encode())}"


def test_check_tokenizer_flags_wrong_tables():
    class FakeSP:  # "ab" decodes to 2 bytes but its piece claims 3 ("▁ab" after a non-boundary)
        pieces = ["<pad>", "<s>", "</s>", "<unk>", "\u2581", "\u2581ab"]

        def vocab_size(self): return len(self.pieces)
        def bos_id(self): return 1
        def piece_to_id(self, p): return self.pieces.index(p) if p in self.pieces else 3
        def id_to_piece(self, i): return self.pieces[i]
        def is_control(self, i): return i in (0, 1, 2)
        def is_unknown(self, i): return i == 3
        def is_unused(self, i): return False
        def is_byte(self, i): return False
        def encode(self, text): return [5, 5]
        def decode(self, ids): return "abab"

    problems = check_tokenizer(FakeSP(), ["abab"])
    assert len(problems) == 1 and "count 5 bytes but the decoded text has 4" in problems[0], problems
