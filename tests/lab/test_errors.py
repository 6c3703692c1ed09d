"""Bad input: one clear error line, a non-zero exit, nothing half-written left behind."""
import errno
import shutil
import subprocess
import sys

import pytest

from loopgolf.cli import main
from loopgolf.config import ConfigError
from loopgolf.lab.errors import is_expected, one_line
from loopgolf.data.tokenizer import train_tokenizer


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _no_partial_files(root):
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == "model.lgz"]


def _copy_shards(tiny_shards, dst):
    dst.mkdir()
    for p in tiny_shards["train"] + tiny_shards["val"]:
        shutil.copy(p, dst / p.name)
    return dst


def _args(d, tok):
    return ["--set", f"data.train={d}/*_train_*.bin", "--set", f"data.val={d}/*_val_*.bin",
            "--set", f"data.tokenizer={tok}", "--set", "train.device=cpu"]


@pytest.mark.parametrize("damage", ["truncate", "flip_magic"])
def test_damaged_shard(tiny_shards, tmp_path, capsys, damage):
    d = _copy_shards(tiny_shards, tmp_path / "shards")
    victim = sorted(d.glob("*_train_*.bin"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[:-7]
    else:
        data[0] ^= 0x40
    victim.write_bytes(bytes(data))
    run = tmp_path / "run"
    code, err = _run(["train", "--preset", "tiny", *_args(d, tiny_shards["tokenizer"]), "--run-dir", str(run)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("loopgolf: error:") and victim.name in err[0]
    assert _no_partial_files(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_tokenizer(tiny_shards, tmp_path, capsys, damage):
    tok = tmp_path / "tok.model"
    data = bytearray(open(tiny_shards["tokenizer"], "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 3]
    else:
        for i in range(10, len(data), 97):
            data[i] ^= 0xFF
    tok.write_bytes(bytes(data))
    code, err = _run(["train", "--preset", "tiny", *_args(tiny_shards["dir"], tok), "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1 and "tok.model" in err[0]


def test_tokenizer_vocab_differs_from_shards(tiny_shards, tmp_path, capsys, make_docs):
    small = train_tokenizer(make_docs(200), vocab_size=330, out_prefix=tmp_path / "small")
    code, err = _run(["train", "--preset", "tiny", *_args(tiny_shards["dir"], small), "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1 and "another tokenizer" in err[0]


def test_impossible_plan(tiny_shards, tmp_path, capsys):
    code, err = _run(["params", "--preset", "tiny", "--set", "model.plan=11:9-12x2"], capsys)
    assert code == 2 and len(err) == 1 and "plan" in err[0]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_artifact_via_subprocess(tiny_args, tiny_shards, tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", *tiny_args, "--set", "train.max_steps=1", "--run-dir", str(run)]) == 0
    art = run / "model.lgz"
    data = bytearray(art.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    else:
        data[len(data) // 2] ^= 0x01
    art.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "loopgolf", "eval", str(art), "--val",
                           f"{tiny_shards['dir']}/*_val_*.bin", "--tokenizer", str(tiny_shards["tokenizer"])],
                          capture_output=True, text=True)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "model.lgz" in err[0], proc.stderr


@pytest.mark.parametrize("err,fragments", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.lgz"),
     ["/runs/x/model.lgz: No space left on device", "free some space"]),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/runs"), ["/ro/runs: Permission denied"]),
])
def test_os_errors_a_user_can_fix_name_the_path(err, fragments):
    text, expected = one_line(err)
    assert expected and all(f in text for f in fragments), text


def test_any_value_or_runtime_error_class_of_loopgolf_is_expected():
    trainer_fault = type("DegenerateModel", (RuntimeError,), {"__module__": "loopgolf.train.loop"})
    assert one_line(trainer_fault("loss stuck at ln(vocab)\nsee train.log")) == (
        "loss stuck at ln(vocab) | see train.log", True)
    assert is_expected(ConfigError("x")) and is_expected(FileNotFoundError("nope"))
    assert not is_expected(ValueError("from a library"))  # not raised by loopgolf code
    assert one_line(TypeError("bug")) == ("TypeError: bug", False)
    assert not is_expected(OSError(errno.EIO, "I/O error"))


def test_plain_value_error_raised_by_loopgolf_code_is_expected():
    from loopgolf.eval.bpb import usable_tokens

    with pytest.raises(ValueError) as info:
        usable_tokens(5, seq_len=32)
    assert is_expected(info.value)
