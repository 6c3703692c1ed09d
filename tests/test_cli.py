"""The CLI's one error path: every expected failure is one `loopgolf: error:` line and exit 2, in a
real process, and leaves no run folder behind; a bug is one line plus the --debug hint (exit 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loopgolf.cli import main
from loopgolf.compress.artifact import write_artifact
from loopgolf.config import QuantConfig
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset


def loopgolf(*argv, cwd=None):
    """Run `python -m loopgolf ARGV` in a fresh process; returns (exit code, stderr lines, stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "loopgolf", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines(), proc.stdout


def one_error(code, err, *fragments):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("loopgolf: error: "), err
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


@pytest.mark.parametrize("setting,fragment", [
    ("model.dim=-8", "model.dim=-8 must be >= 1"),
    ("model.dim=-5", "model.dim=-5 must be >= 1"),
    ("model.dim=0", "model.dim=0 must be >= 1"),
    ("model.n_heads=0", "model.n_heads=0 must be >= 1"),
    ("train.batch_tokens=0", "train.batch_tokens=0 must be > 0"),
    ("train.batch_tokens=-256", "train.batch_tokens=-256 must be > 0"),
    ("train.budget_s=-1", "train.budget_s=-1.0 must be > 0"),
    ("train.budget_s=nan", "train.budget_s=nan must be a finite number"),
    ("train.budget_s=inf", "train.budget_s=inf must be a finite number"),
    ("optim.matrix_lr=-1", "optim.matrix_lr=-1.0 must be >= 0"),
    ("train.micro_batch_seqs=0", "train.micro_batch_seqs"),
])
def test_bad_fields_are_one_line_and_leave_no_run_folder(tiny_args, tmp_path, capsys, setting, fragment):
    run = tmp_path / "run"
    code = main(["train", "--preset", "tiny", *tiny_args, "--set", setting, "--run-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    line = one_error(code, err, fragment)
    assert "divisible" not in line
    assert not run.exists()


def test_train_without_data_names_the_fields_and_writes_nothing(tmp_path):
    code, err, _ = loopgolf("train", cwd=tmp_path)
    one_error(code, err, "data.train, data.val, data.tokenizer not set", "--set data.train=")
    assert list(tmp_path.iterdir()) == []  # no runs/baseline/


def test_demo_refuses_a_negative_budget(tmp_path):
    code, err, _ = loopgolf("demo", "--budget-s", "-5", "--out-dir", tmp_path / "runs",
                            "--cache-dir", tmp_path / "cache")
    one_error(code, err, "--budget-s -5.0")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, tiny_shards):
    run = tmp_path_factory.mktemp("art") / "run"
    d = tiny_shards["dir"]
    assert main(["train", "--preset", "tiny", "--set", f"data.train={d}/*_train_*.bin",
                 "--set", f"data.val={d}/*_val_*.bin", "--set", f"data.tokenizer={tiny_shards['tokenizer']}",
                 "--set", "train.device=cpu", "--set", "train.max_steps=2", "--run-dir", str(run)]) == 0
    return run


def _eval_args(art, tiny_shards):
    return ["eval", art, "--val", f"{tiny_shards['dir']}/*_val_*.bin", "--tokenizer", tiny_shards["tokenizer"]]


@pytest.mark.parametrize("extra,fragments", [
    (["--max-tokens", "10"], ["--max-tokens 10", "data.seq_len=32"]),
    (["--max-tokens", "-5"], ["--max-tokens -5 must be >= 0"]),
    (["--device", "tpu"], ["invalid choice: 'tpu'"]),
])
def test_eval_refuses_bad_options(tiny_artifact, tiny_shards, extra, fragments):
    code, err, _ = loopgolf(*_eval_args(tiny_artifact / "model.lgz", tiny_shards), *extra)
    one_error(code, err, *fragments)


def test_artifact_whose_config_does_not_match_its_tensors(tiny_shards, tmp_path):
    cfg = get_preset("tiny")
    state = GPT(cfg.model).state_dict()
    cfg.model.mlp_hidden = 96  # the embedded config now promises other shapes; the checksum is valid
    art = tmp_path / "resealed.lgz"
    write_artifact(art, state, {"config": cfg.to_dict()}, QuantConfig())
    code, err, _ = loopgolf(*_eval_args(art, tiny_shards))
    one_error(code, err, "resealed.lgz", "do not match its embedded config", "wrong shape", "re-run `loopgolf train`")


def test_size_counts_the_code_bytes_the_run_counted(tiny_artifact, capsys):
    res = json.loads((tiny_artifact / "result.json").read_text())
    assert main(["size", str(tiny_artifact / "model.lgz")]) == 0
    assert f"code {res['code_bytes']:,} B" in capsys.readouterr().out
    assert main(["size", str(tiny_artifact / "model.lgz"), "--code", "core"]) == 0
    assert f"code {res['code_bytes']:,} B" not in capsys.readouterr().out


def test_unexpected_error_points_to_debug(monkeypatch, capsys):
    import loopgolf.cli as cli

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "cmd_presets", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["loopgolf: error: TypeError: a bug (rerun with --debug for the traceback)"]
    with pytest.raises(TypeError, match="a bug"):
        main(["--debug", "presets"])


def test_debug_shows_the_traceback_in_a_process():
    code, err, _ = loopgolf("--debug", "params", "--preset", "tiny", "--set", "model.dim=-8")
    assert code == 1 and err[0].startswith("Traceback") and "ConfigError: model.dim=-8" in err[-1]


def test_usage_errors_are_one_line_too():
    code, err, _ = loopgolf("train", "--no-such-flag")
    one_error(code, err, "unrecognized arguments: --no-such-flag")


def test_presets_lists_whole_first_sentences_and_counts(capsys):
    assert main(["presets"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert "17,059,912 parameters" in lines["baseline"]
    assert "18,851,360 parameters (17,671,712 ship)" in lines["seed-lora-mtp"]
    assert lines["tiny"].endswith("seq 32, 8 steps.")
    assert all(ln.rstrip().endswith((".", ")")) for ln in lines.values()), lines


def test_unknown_preset():
    code, err, _ = loopgolf("config", "--preset", "nope")
    one_error(code, err, "unknown preset 'nope'", "available: baseline")


def test_bench_refuses_a_non_positive_budget(tmp_path, capsys):
    code = main(["bench", "run", "--shards", str(tmp_path), "--tokenizer", "t.model", "--presets", "tiny",
                 "--budget-s", "0", "--out", str(tmp_path / "bench")])
    one_error(code, capsys.readouterr().err.strip().splitlines(), "--budget-s 0.0")
    assert not (tmp_path / "bench").exists()


def test_new_lab_commands_are_registered_and_bench_cap_is_checked(tmp_path):
    from loopgolf.cli import build_parser

    ap = build_parser()
    args = ap.parse_args(["fidelity", "--script", "s.py", "--preset", "baseline", "--train", "t", "--val", "v",
                          "--tokenizer", "m", "--out", str(tmp_path)])
    assert args.fn.__name__ == "cmd_fidelity" and args.script_seeds == [1337, 42]
    args = ap.parse_args(["ablate", "loops", "--preset", "tiny", "--caps", "16000000", "4000000", "--out", "o"])
    assert args.fn.__name__ == "cmd_ablate_loops" and args.caps == [16_000_000, 4_000_000]
    proc = subprocess.run([sys.executable, "-m", "loopgolf", "bench", "run", "--shards", "x", "--tokenizer", "y",
                           "--presets", "tiny", "--out", str(tmp_path / "b"), "--cap", "5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "loopgolf: error: --cap 5: give a byte cap in 10,001..16,000,000"
