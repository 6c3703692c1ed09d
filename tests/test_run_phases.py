"""The run phases (run_phases.py) end to end through the CLI, and their faults: SIGKILL then --resume, a full disk, a failed
resume, a changed shape on resume, a model that learns nothing, a NaN score, progress on a TTY.

Subprocess cases assert exit status 2, exactly one `loopgolf: error:` line on stderr, and the files
left behind."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopgolf import run_phases
from loopgolf.cli import main
from loopgolf.pipeline import write_json


def _sets(*items: str) -> list[str]:
    return sum((["--set", s] for s in items), [])


def _cmd(tiny_args, run_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "loopgolf", "train", "--preset", "tiny", *tiny_args,
            "--run-dir", str(run_dir), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _one_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("loopgolf: error: "), proc.stderr[-3000:]
    return errors[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# default settings: a 10-minute budget turns checkpoints on (every 10 % of the run); EMA on
KILLABLE = ("train.budget_s=600", "train.max_steps=60", "optim.ema_horizon_frac=0.2", "eval.max_tokens=4096")


def test_sigkill_then_resume_gives_the_same_artifact(tiny_args, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_cmd(tiny_args, straight, *_sets(*KILLABLE)), check=True, capture_output=True,
                   env=_env(), timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_args, killed, *_sets(*KILLABLE)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    ck = killed / "checkpoints" / "checkpoint-00000018.pt"  # the third checkpoint of 60 steps
    deadline = time.time() + 300
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "model.lgz").exists(), "the run finished before it was killed"
    resumed = subprocess.run(_cmd(tiny_args, killed, "--resume", *_sets(*KILLABLE)), capture_output=True,
                             text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _sha(killed / "model.lgz") == _sha(straight / "model.lgz")
    assert "resume step:" in (killed / "train.log").read_text()
    attempts = [json.loads(x) for x in (killed / "attempts.jsonl").read_text().splitlines()]
    assert [(a["event"], a.get("resume")) for a in attempts] == [  # the killed start and the resume
        ("start", False), ("start", True), ("end", None)]
    assert len(list((killed / "checkpoints").glob("checkpoint-*.pt"))) == 2  # rotated: the newest two


def test_failed_resume_leaves_provenance_alone(tiny_args, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(run_dir)]) == 0
    before = {n: (run_dir / n).read_bytes() for n in ("config.json", "env.json", "train.log", "result.json")}
    proc = subprocess.run(_cmd(tiny_args, run_dir, "--resume"), capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert "no checkpoint to resume from; start without --resume" in _one_error(proc)
    assert {n: (run_dir / n).read_bytes() for n in before} == before
    attempts = [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert [(a["event"], a.get("resume")) for a in attempts] == [
        ("start", False), ("end", None), ("start", True), ("end", None)]
    assert attempts[1]["outcome"] == "trained" and "CheckpointError" in attempts[3]["outcome"]


def test_resume_with_another_model_shape_is_refused(tiny_args, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.run(_cmd(tiny_args, run_dir, *_sets("train.checkpoint_every=4")), capture_output=True,
                           text=True, env=_env(), timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    proc = subprocess.run(_cmd(tiny_args, run_dir, "--resume", *_sets("train.checkpoint_every=4", "model.dim=64")),
                          capture_output=True, text=True, env=_env(), timeout=600)
    line = _one_error(proc)
    assert "--resume with a different config (model.dim: 32 -> 64)" in line and "checkpoint-00000008.pt" in line


def test_a_model_stuck_at_uniform_loss_stops_before_shipping(tiny_args, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(_cmd(tiny_args, run_dir, *_sets("optim.matrix_lr=1e9", "train.max_steps=40")),
                          capture_output=True, text=True, env=_env(), timeout=600)
    line = _one_error(proc)
    assert "ln(vocab) = 6.2383" in line and "lower optim.matrix_lr" in line
    assert not (run_dir / "model.lgz").exists() and not (run_dir / "result.json").exists()
    assert (run_dir / "config.json").is_file()


def test_a_nan_score_is_an_error_never_a_result(tiny_args, tmp_path, monkeypatch, capsys):
    real = run_phases.evaluate_recipe

    def nan_score(*a, **k):
        return {**real(*a, **k), "val_bpb": math.nan}
    monkeypatch.setattr(run_phases, "evaluate_recipe", nan_score)
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prequant_eval: val_bpb is nan" in err[0]
    assert not (run_dir / "result.json").exists() and not (run_dir / "model.lgz").exists()
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"val_bpb": math.nan})  # JSON stays strict


def test_full_disk_keeps_old_files_and_the_weights(tiny_args, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(straight)]) == 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.lgz").write_bytes(b"an older artifact")
    real = run_phases.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "model.lgz":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(run_phases, "atomic_write_bytes", full)
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    kept = run_dir / "checkpoints" / "checkpoint-00000008.pt"
    assert len(err) == 1 and "model.lgz: cannot write the artifact (the disk is full)" in err[0]
    assert f"the trained weights are in {kept}" in err[0] and "rerun with --resume" in err[0]
    assert (run_dir / "model.lgz").read_bytes() == b"an older artifact" and kept.is_file()
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(run_phases, "atomic_write_bytes", real)  # space freed: finish with --resume
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(run_dir), "--resume"]) == 0
    assert _sha(run_dir / "model.lgz") == _sha(straight / "model.lgz")


def test_progress_bar_on_a_terminal_plain_lines_in_a_pipe(tiny_args, tmp_path):
    piped = subprocess.run(_cmd(tiny_args, tmp_path / "piped"), capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "train step:8" in piped.stdout and "%|" not in piped.stderr
    assert '"model"' not in piped.stdout  # the config JSON goes to the run folder only
    assert '"model"' in (tmp_path / "piped" / "train.log").read_text()
    master, slave = pty.openpty()
    proc = subprocess.Popen(_cmd(tiny_args, tmp_path / "tty"), stdout=subprocess.PIPE, stderr=slave,
                            env={**_env(), "COLUMNS": "120"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child has closed its end
            break
        if not data:
            break
        chunks.append(data)
    out = proc.communicate(timeout=600)[0].decode()
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "train 100%|" in tty and "tok/s" in tty and "step 8 loss" in tty
    assert "train step:" not in out  # per-step lines stay in train.log while the bar runs
    assert "train step:8" in (tmp_path / "tty" / "train.log").read_text()


def test_a_refused_start_creates_no_run_folder(tiny_args, tmp_path, capsys):
    run_dir = tmp_path / "new"
    assert main(["train", "--preset", "tiny", *tiny_args, "--set", f"data.val={tmp_path}/none_*.bin",
                 "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none_*.bin" in err[0]
    assert not run_dir.exists()
