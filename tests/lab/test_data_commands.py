"""The `data` command group: each subcommand on small local data, exit codes and error lines."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from loopgolf.data.shards import write_shard
from loopgolf.lab.data_commands import register


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="loopgolf")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.fn(args)


@pytest.fixture
def local_repo(tmp_path, tiny_sp_model):
    root = tmp_path / "repo" / "datasets"
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin"):
        write_shard(root / "datasets/fineweb10B_sp1024" / name, np.r_[1, np.arange(2, 300)])
    (root / "tokenizers").mkdir()
    (root / "tokenizers/fineweb_1024_bpe.model").write_bytes(tiny_sp_model.read_bytes())
    (root / "manifest.json").write_text(json.dumps({
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "t",
                      "stats": {"files_train": 1, "files_val": 1}}],
        "tokenizers": [{"name": "t", "model_path": "tokenizers/fineweb_1024_bpe.model"}]}))
    return root.parent


def test_fineweb_then_info(local_repo, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["data", "fineweb", "--variant", "sp1024", "--train-shards", "1", "--source", str(local_repo),
            "--out", str(out), "--no-progress"]
    assert _run(argv) == 0
    assert "3 downloaded, 0 already complete" in capsys.readouterr().out
    assert _run(argv) == 0
    assert "0 downloaded, 3 already complete" in capsys.readouterr().out
    # info finds the tokenizer from the download layout; the shared document is flagged
    report = tmp_path / "info.json"
    assert _run(["data", "info", str(out / "datasets/fineweb10B_sp1024"), "--json", str(report)]) == 1
    info = json.loads(report.read_text())
    assert info["tokenizer"].endswith("tokenizers/fineweb_1024_bpe.model")
    assert info["splits"]["val"]["tokens"] == 299 and info["splits"]["val"]["documents"] == 1
    assert [c["check"] for c in info["checks"] if not c["ok"]] == ["train_val_disjoint"]


def test_fineweb_errors_are_one_line(tmp_path, capsys):
    assert _run(["data", "fineweb", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loopgolf: error: --source") and err.count("\n") == 1


def test_tokenizer_tokenize_with_transform_info_and_selftest(tmp_path, make_docs, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"body": d}) + "\n" for d in make_docs(300, seed=4)))
    prefix = tmp_path / "tok"
    assert _run(["data", "tokenizer", "--input", str(docs), "--text-key", "body", "--vocab-size", "420",
                 "--out", str(prefix), "--transform", "case"]) == 0
    assert "self-test passed" in capsys.readouterr().out
    shards = tmp_path / "shards"
    assert _run(["data", "tokenize", "--input", str(docs), "--text-key", "body", "--tokenizer",
                 f"{prefix}.model", "--out", str(shards), "--val-fraction", "0.1", "--workers", "1",
                 "--transform", "case"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["transform"] == "case" and manifest["overlap"] == 0
    capsys.readouterr()
    assert _run(["data", "info", str(shards)]) == 0
    text = capsys.readouterr().out
    assert "sidecar" in text and "[ok] manifest_tokenizer" in text
    assert _run(["data", "selftest", "--tokenizer", f"{prefix}.model", "--input", str(docs),
                 "--text-key", "body", "--max-docs", "20", "--transform", "case"]) == 0
    assert "passed (30 texts" in capsys.readouterr().out


def test_selftest_missing_tokenizer(tmp_path, capsys):
    assert _run(["data", "selftest", "--tokenizer", str(tmp_path / "no.model")]) == 2
    assert "tokenizer file not found" in capsys.readouterr().err


def _loopgolf(*argv):
    proc = subprocess.run([sys.executable, "-m", "loopgolf", *map(str, argv)], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines(), proc.stdout


def test_info_refuses_shards_without_a_manifest(tmp_path, tiny_shards):
    d = tmp_path / "unfinished"
    d.mkdir()
    for p in tiny_shards["train"] + tiny_shards["val"]:
        shutil.copy(p, d / p.name)
    code, err, _ = _loopgolf("data", "info", d, "--tokenizer", tiny_shards["tokenizer"])
    assert code == 2 and len(err) == 1 and err[0].startswith("loopgolf: error: "), err
    assert str(d) in err[0] and "no manifest.json" in err[0] and "--no-manifest" in err[0]
    code, _, out = _loopgolf("data", "info", d, "--tokenizer", tiny_shards["tokenizer"], "--no-manifest")
    assert code == 0 and "[ok] headers" in out


def test_tokenize_an_empty_file_is_one_line(tmp_path, tiny_sp_model):
    (tmp_path / "empty.txt").write_text("")
    code, err, _ = _loopgolf("data", "tokenize", "--input", tmp_path / "empty.txt", "--tokenizer",
                             tiny_sp_model, "--out", tmp_path / "out")
    assert code == 2 and len(err) == 1 and "empty.txt: no documents" in err[0], err
    assert not (tmp_path / "out").exists()


def test_info_finds_the_demo_tokenizer_in_the_cache(tmp_path, monkeypatch, make_docs, capsys):
    from loopgolf.data import demo_cache

    monkeypatch.setattr(demo_cache, "demo_documents", lambda: (make_docs(300, seed=7), "test docs"))
    assert _run(["data", "demo", "--cache-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert _run(["data", "info", str(tmp_path)]) == 0  # the cache's stamp is its manifest
    out = capsys.readouterr().out
    assert f"tokenizer: {tmp_path / 'tokenizer_1024.model'} (vocab" in out and "[FAIL]" not in out
