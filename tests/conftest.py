"""Shared fixtures: a tiny byte-fallback tokenizer trained once per session, and shards made with it."""
from __future__ import annotations

import random

import pytest

from loopgolf.data.prepare import tokenize_documents
from loopgolf.data.tokenizer import train_tokenizer

_WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or "
          "has had first new one after also their its city river music garden school water light "
          "paper window mountain story number market").split()
_EXTRA = ("café", "über", "naïve", "Zürich", "résumé", "Ångström", "fiancée", "Motörhead")


def tiny_documents(n: int, seed: int = 0) -> list[str]:
    """English-ish documents with digits, accents, punctuation and newlines."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
            words.insert(rng.randrange(len(words)), rng.choice(_EXTRA))
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
        docs.append(f"Document {i}\n" + " ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def tiny_sp_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer") / "tiny"
    return train_tokenizer(tiny_documents(400), vocab_size=400, out_prefix=out)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, tiny_sp_model):
    out = tmp_path_factory.mktemp("shards")
    train_docs, val_docs = tiny_documents(300, seed=1), tiny_documents(40, seed=2)
    train = tokenize_documents(train_docs, tiny_sp_model, out, "train", shard_tokens=4096,
                               workers=1, progress=False)
    val = tokenize_documents(val_docs, tiny_sp_model, out, "val", workers=1, progress=False)
    return {"dir": out, "train": train, "val": val, "tokenizer": tiny_sp_model,
            "train_docs": train_docs, "val_docs": val_docs}


@pytest.fixture(scope="session")
def make_docs():
    """The document generator behind the fixtures: make_docs(n, seed) -> list[str]."""
    return tiny_documents


@pytest.fixture
def tiny_args(tiny_shards):
    """--set arguments pointing the tiny preset at the session's tiny shards."""
    d = tiny_shards["dir"]
    return ["--set", f"data.train={d}/*_train_*.bin", "--set", f"data.val={d}/*_val_*.bin",
            "--set", f"data.tokenizer={tiny_shards['tokenizer']}", "--set", "train.device=cpu"]


@pytest.fixture(scope="session")
def make_case_shards():
    """make_case_shards(out_dir, docs) -> tokenizer path: a case-transform tokenizer (vocab 420) trained
    on tiny documents, and `docs` written as case-transformed val shards with their byte sidecar."""
    from loopgolf.data.transform import CaseTransform

    def make(out_dir, docs):
        ct = CaseTransform()
        tok = train_tokenizer([ct.encode(x) for x in tiny_documents(300)], 420, out_dir / "case",
                              user_defined_symbols=ct.reserved)
        tokenize_documents(docs, tok, out_dir, "val", workers=1, progress=False, transform="case")
        return tok
    return make
