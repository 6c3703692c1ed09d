"""SentencePiece tokenizers: load with clear errors, train with the challenge's settings, self-test.

The challenge scores bits per byte of the validation text, and the byte count comes from tables
built from the tokenizer (luts.py). A tokenizer that breaks those tables silently under-reports
bpb, so check_tokenizer() verifies, on real texts, that the tables count exactly the bytes the
tokenizer decodes to, and that a standalone "\u2581" piece exists (challenge issue #897).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from .atomic import atomic_write_bytes

BOS_ID = 1  # every document in a shard starts with this id (challenge convention; no EOS)
SPACE_PIECE = "\u2581"  # SentencePiece's visible space
_MAX_SENTENCE_BYTES = 1 << 16  # longer trainer inputs are split at newlines (see _trainer_inputs)
# Texts that exercise the byte rules: spaces before rare characters (#897), digits, accents, CJK,
# emoji, control-ish whitespace, a literal U+2581, and text with no spaces at all.
SELFTEST_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Numbers 1234567890 and 3.14159, dates 2024-05-20.",
    "caf\u00e9 na\u00efve Z\u00fcrich \u00c5ngstr\u00f6m r\u00e9sum\u00e9",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "emoji \U0001f600 \U0001f680 \u2603 and symbols \u00a9 \u20ac \u2192 \u221e",
    "line one\nline two\n\nparagraph\ttab",
    "a \u2581 literal visible-space character",
    "nospacesatallinthistext",
    "  leading and   repeated   spaces  ",
    "\ue001 private use \ue004 operators",
)


class TokenizerError(ValueError):
    """A missing, unreadable or unsuitable tokenizer; the message names the file and the fix."""


def load_tokenizer(path: str | os.PathLike,
                   expected_sha256: str | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece .model file, turning every failure into a TokenizerError.

    Most single bit flips still parse (they land in a piece string or a score), so pass the digest
    recorded when the shards were made (manifest.json's tokenizer_sha256) to detect them.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(
            f"{path}: tokenizer file not found; pass the SentencePiece .model file the shards "
            "were made with (e.g. the challenge's fineweb_1024_bpe.model)") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory; pass the tokenizer's .model file") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read tokenizer file ({e.strerror})") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256.lower():
        raise TokenizerError(
            f"{path}: SHA-256 {hashlib.sha256(data).hexdigest()} differs from the expected "
            f"{expected_sha256}; the file is corrupted or is another tokenizer: use the .model "
            "file the shards were made with")
    sp = spm.SentencePieceProcessor()
    try:
        ok = sp.LoadFromSerializedProto(data)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise TokenizerError(
            f"{path}: not a valid SentencePiece model ({str(e).strip() or type(e).__name__}); the "
            "file is truncated or corrupted, or is not a .model file: copy or train it again") from None
    if ok is False or sp.vocab_size() <= 0:
        raise TokenizerError(
            f"{path}: SentencePiece could not load this model; the file is truncated or "
            "corrupted: copy or train it again")
    return sp


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_prefix: str | os.PathLike,
                    max_docs: int | None = None, user_defined_symbols: Iterable[str] = ()) -> Path:
    """Train a byte-fallback BPE tokenizer; writes <out_prefix>.model and .vocab atomically.

    Trainer settings are the challenge's (its fineweb_1024_bpe tokenizer). max_docs keeps only the
    first max_docs non-empty documents (shuffle beforehand for a uniform sample). Returns the path
    of the .model file. user_defined_symbols reserves pieces, e.g. a text transform's operators.
    """
    if vocab_size < 1 or vocab_size > 65536:
        raise TokenizerError(f"vocab_size={vocab_size}: shards store uint16 ids, so 1..65536")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    docs = (d for d in documents if d)
    if max_docs is not None:
        docs = itertools.islice(docs, max_docs)
    # model_writer instead of model_prefix: the trainer records model_prefix inside the model, which
    # would make the bytes depend on a temporary path; it also lets both files be written atomically.
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_trainer_inputs(docs),
            model_writer=writer,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=0.999,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False,
            pad_id=0,
            bos_id=BOS_ID,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,
            user_defined_symbols=list(user_defined_symbols),
            # Documents are capped by max_docs above, so load all of them, in order:
            # no trainer-side sampling keeps training deterministic.
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=os.cpu_count() or 1,
            minloglevel=1,
        )
    except RuntimeError as e:
        raise TokenizerError(
            f"training a {vocab_size}-piece tokenizer for {out_prefix}.model failed: "
            f"{str(e).strip()}; with byte fallback vocab_size must exceed 260 plus the number "
            "of distinct characters, and the documents must not be empty") from None
    model_bytes = writer.getvalue()
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    # Same "piece<TAB>score" lines SentencePiece writes next to a model trained with model_prefix.
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    atomic_write_bytes(f"{out_prefix}.vocab", vocab.encode("utf-8"))
    return atomic_write_bytes(f"{out_prefix}.model", model_bytes)


def _trainer_inputs(docs: Iterable[str]) -> Iterator[str]:
    # The trainer drops any input longer than max_sentence_length bytes; split such documents at
    # newlines (which the nmt_nfkc normalizer turns into spaces anyway) and hard-cut what remains.
    for doc in docs:
        if len(doc) * 4 <= _MAX_SENTENCE_BYTES or len(doc.encode("utf-8")) <= _MAX_SENTENCE_BYTES:
            yield doc
            continue
        for line in doc.split("\n"):
            step = _MAX_SENTENCE_BYTES // 4
            for start in range(0, len(line), step):
                yield line[start:start + step]


def check_tokenizer(sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> list[str]:
    """Self-test a tokenizer against the byte tables; returns a list of problems (empty = OK).

    Checks that BOS is id 1, that a standalone "\u2581" piece exists, and, for each text, that the
    tables' byte count of [BOS] + encode(text) equals the UTF-8 length of the decoded text and of
    the text as the tokenizer normalizes it (NFKC, extra spaces removed).
    """
    from .luts import build_byte_luts, target_bytes  # luts imports TokenizerError from here

    problems: list[str] = []
    if sp.bos_id() != BOS_ID:
        problems.append(f"BOS id is {sp.bos_id()}, but shards start every document with id {BOS_ID}")
    space_id = sp.piece_to_id(SPACE_PIECE)
    if (space_id < 0 or sp.id_to_piece(space_id) != SPACE_PIECE or sp.is_unknown(space_id)
            or sp.is_control(space_id) or sp.is_unused(space_id) or sp.is_byte(space_id)):
        problems.append(
            f"no standalone {SPACE_PIECE!r} piece: a space before a byte-fallback character is "
            "encoded as the 3 UTF-8 bytes of U+2581, so bpb is misreported (challenge issue "
            "#897); retrain with more data or a larger vocab")
    luts = build_byte_luts(sp, sp.vocab_size())
    for i, text in enumerate(texts):
        ids = [BOS_ID, *sp.encode(text)]
        counted = int(target_bytes(luts, ids[:-1], ids[1:]).sum())
        expected = len(sp.decode(ids[1:]).encode("utf-8"))
        if counted != expected:
            problems.append(
                f"text {i} ({text[:40]!r}): byte tables count {counted} bytes but the decoded "
                f"text has {expected}")
            continue
        normalized = len(sp.normalize(text).replace(SPACE_PIECE, " ").encode("utf-8"))
        if counted != normalized:
            problems.append(
                f"text {i} ({text[:40]!r}): byte tables count {counted} bytes but the normalized "
                f"text has {normalized}")
    return problems


def selftest_tokenizer(path: str | os.PathLike, texts: Iterable[str] = ()) -> dict:
    """Run check_tokenizer on SELFTEST_TEXTS plus `texts`; a report dict with "ok" and "problems"."""
    sp = load_tokenizer(path)
    all_texts = [*SELFTEST_TEXTS, *texts]
    problems = check_tokenizer(sp, all_texts)
    return {"tokenizer": str(path), "vocab_size": sp.vocab_size(), "texts": len(all_texts),
            "ok": not problems, "problems": problems}
