"""Run logging: key:value text lines, JSONL records, disabled loggers, code hash and provenance."""
from __future__ import annotations

import hashlib
import json
import re
import time

import pytest

import loopgolf
from loopgolf import metrics
from loopgolf.metrics import Logger, code_hash, provenance


def test_log_writes_text_line_and_jsonl_record(tmp_path, capsys) -> None:
    run = tmp_path / "run" / "a"
    log = Logger(run)
    t0 = time.time()
    log.log("step", loss=1.23456, n=3, lr=0.5, tiny=1e-4, big=1234567.0, whole=2.0, name="x")
    log.text("free text")
    log.close()
    want = "step loss:1.2346 n:3 lr:0.5 tiny:0.0001 big:1.23457e+06 whole:2 name:x"
    assert (run / "train.log").read_text(encoding="utf-8") == want + "\nfree text\n"
    assert capsys.readouterr().out == want + "\nfree text\n"
    (rec,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rec.pop("t") == pytest.approx(t0, abs=5.0)
    assert rec == {"event": "step", "loss": 1.23456, "n": 3, "lr": 0.5, "tiny": 1e-4,
                   "big": 1234567.0, "whole": 2.0, "name": "x"}


def test_logger_appends_across_instances_and_echo_off(tmp_path, capsys) -> None:
    for i in range(2):
        log = Logger(tmp_path, echo=False)
        log.log("eval", i=i)
        log.close()
    assert (tmp_path / "train.log").read_text().splitlines() == ["eval i:0", "eval i:1"]
    assert [json.loads(x)["i"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert capsys.readouterr().out == ""


def test_disabled_logger_writes_nothing(tmp_path, capsys) -> None:
    run = tmp_path / "rank1"
    log = Logger(run, enabled=False)
    log.log("step", loss=1.0)
    log.text("hello")
    log.close()
    assert not run.exists()
    assert capsys.readouterr().out == ""


def test_logger_without_run_dir_only_prints(tmp_path, capsys) -> None:
    log = Logger(None)
    log.log("step", loss=0.25)
    log.close()
    assert capsys.readouterr().out == "step loss:0.25\n"
    assert list(tmp_path.iterdir()) == []


def fake_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "sub" / "b.py").write_text("B = 2\n")
    (pkg / "notes.txt").write_text("ignored\n")
    return pkg


def test_code_hash_known_answer_and_sensitivity(tmp_path, monkeypatch) -> None:
    pkg = fake_package(tmp_path)
    monkeypatch.setattr(metrics, "PACKAGE_DIR", pkg)
    want = hashlib.sha256(b"a.py" + b"A = 1\n" + b"sub/b.py" + b"B = 2\n").hexdigest()
    h0 = code_hash()
    assert h0 == want
    (pkg / "notes.txt").write_text("changed\n")
    assert code_hash() == h0  # only .py files count
    (pkg / "sub" / "b.py").write_text("B = 3\n")
    h1 = code_hash()
    assert h1 != h0
    (pkg / "sub" / "b.py").write_text("B = 2\n")
    assert code_hash() == h0
    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")
    assert code_hash() != h0  # the path is hashed too
    (pkg / "sub" / "c.py").rename(pkg / "sub" / "b.py")
    (pkg / "new.py").write_text("")
    assert code_hash() != h0  # an added (even empty) file counts


def test_real_package_dir_is_this_package() -> None:
    assert (metrics.PACKAGE_DIR / "metrics.py").samefile(metrics.__file__)
    assert re.fullmatch(r"[0-9a-f]{64}", code_hash())


def test_provenance_keys(tmp_path, monkeypatch) -> None:
    import numpy
    import torch

    monkeypatch.setattr(metrics, "PACKAGE_DIR", fake_package(tmp_path))
    env = provenance()
    required = {"loopgolf", "code_sha256", "python", "platform", "torch", "numpy", "cuda", "argv",
                "time_utc"}
    assert required <= set(env) <= required | {"sentencepiece", "gpus"}
    assert env["code_sha256"] == code_hash()
    assert env["loopgolf"] == loopgolf.__version__
    assert env["torch"] == torch.__version__ and env["numpy"] == numpy.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["time_utc"])
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", env["python"])
    json.dumps(env)  # provenance goes into JSON headers: it must serialize


def test_numpy_and_tensor_fields_are_written_as_numbers(tmp_path):
    import numpy as np
    import torch

    from loopgolf.metrics import Logger

    log = Logger(tmp_path, echo=False)
    log.log("x", a=np.float32(0.5), b=np.int64(3), c=torch.tensor(2.0))
    log.close()
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert (rec["a"], rec["b"], rec["c"]) == (0.5, 3, 2.0)
