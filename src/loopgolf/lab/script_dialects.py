"""Published scripts that are not the challenge's env-driven train_gpt.py, run by `loopgolf fidelity`.

The challenge's scripts take DATA_PATH, SEED, ITERATIONS, ... from the environment and log
`step:N/M train_loss:X ... step_avg:Sms` (lab/fidelity.py). PR #29's script (the seed of
`seed-universal-mqa`, records/track_10min_16mb/2026-03-19_nidhilak-Aquarius) does none of that:
- its data path is fixed, `./data/datasets/fineweb10B_sp1024/` under the working directory, and
  it reads every `*train*.bin` / `*val*.bin` there with np.fromfile as uint16, header included. The
  256-int32 shard header then reads as 512 tokens of ids up to 65,535, outside its vocabulary of
  1,024. A random window that covers them crashes the embedding on a GPU. So this stages
  header-free copies: the published bug, its intent implemented;
- its seed is a constant (Config.seed = 42) passed to torch.manual_seed, so a second seed comes from
  a shim that runs the script with torch.manual_seed pinned to the seed asked for;
- its batch is one forward of Config.batch_tokens = 524,288 tokens, with no accumulation: eager, that
  needs more than the 139 GiB of one H200 (measured: OOM in its first step). The shim sets the
  Config's defaults asked for (`batch_tokens=262144`) before the dataclass is made, so both codes run
  the same smaller global batch on one GPU; the report's command line shows it;
- its loader yields int32 tokens, and F.cross_entropy refuses int32 targets, so its first step fails
  on real shards (its only log is a CPU smoke test on random int64 data: it never ran on shards).
  The shim casts integer targets to int64 inside cross_entropy, the intent;
- it trains for a wall clock (570 s) with no step limit, so the run is stopped once its log shows
  the step count asked for;
- it logs `step N | loss X | ... | Es elapsed` every 10 steps, X being the mean of those 10 steps.
  Its final "val_bpb (approx)" is bits per token over 20 random batches, not bpb, so it is not
  reported.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from loopgolf import dist
from loopgolf.data.shards import list_shards, load_shard
from loopgolf.lab.fidelity import RunLog

DIALECTS = ("challenge", "pr29")
_PR29_STEP = re.compile(r"^step\s+(\d+)\s*\|\s*loss\s+([0-9.]+(?:e-?\d+)?)\s*\|.*?\|\s*([0-9.]+)s elapsed")

SEED_SHIM = '''"""Run a script with torch.manual_seed pinned and Config defaults set: shim.py SEED SCRIPT [FIELD=VALUE ...];
written by `loopgolf fidelity`."""
import dataclasses
import runpy
import sys

import torch

_seed, _orig = int(sys.argv[1]), torch.manual_seed
torch.manual_seed = lambda s: _orig(_seed)
_over = dict(kv.split("=", 1) for kv in sys.argv[3:])
_make = dataclasses.dataclass


def _dataclass(cls=None, /, **kw):
    def wrap(c):
        if c.__name__ == "Config" and c.__module__ == "__main__":  # the script's, not torch._dynamo's
            for k, v in _over.items():
                setattr(c, k, type(getattr(c, k))(v))  # AttributeError: the script has no such field
        return _make(c, **kw)
    return wrap if cls is None else wrap(cls)


dataclasses.dataclass = _dataclass
_ce = torch.nn.functional.cross_entropy


def _cross_entropy(input, target, *a, **kw):
    if not target.is_floating_point() and target.dtype not in (torch.int64, torch.uint8):
        target = target.long()  # its loader yields int32 tokens, which cross_entropy refuses
    return _ce(input, target, *a, **kw)


torch.nn.functional.cross_entropy = _cross_entropy
script = sys.argv[2]
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
'''


def parse_pr29_log(text: str) -> RunLog:
    """PR #29's `step N | loss X | ... | Es elapsed` lines: X (a 10-step mean) at step N; ms/step
    from the last line's elapsed seconds (printed rounded to 1 s)."""
    out = RunLog(loss_window=10)  # L475-481: running_loss / 10 every 10 steps
    for line in text.splitlines():
        if m := _PR29_STEP.search(line.strip()):
            step = int(m[1])
            out.train_loss[step] = float(m[2])
            out.steps = max(out.steps, step)
            out.ms_per_step = round(1000 * float(m[3]) / step, 1)
    return out


def stage_pr29_data(train: str, val: str, tokenizer: str, workdir: Path) -> Path:
    """workdir/data/datasets/fineweb10B_sp1024/fineweb_{train,val}_NNNNNN.bin as bare uint16 tokens
    (no header) and workdir/data/tokenizers/fineweb_1024_bpe.model, the paths PR #29 reads."""
    data = workdir / "data" / "datasets" / "fineweb10B_sp1024"
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("*.bin"):
        old.unlink()
    for split, pattern in (("train", train), ("val", val)):
        for i, path in enumerate(list_shards(pattern)):
            np.asarray(load_shard(path), dtype=np.uint16).tofile(data / f"fineweb_{split}_{i:06d}.bin")
    tok = workdir / "data" / "tokenizers" / "fineweb_1024_bpe.model"
    tok.parent.mkdir(parents=True, exist_ok=True)
    tok.unlink(missing_ok=True)
    tok.symlink_to(Path(tokenizer).resolve())
    return data


def run_until_step(cmd: list[str], env: dict[str, str], workdir: Path, log_path: Path, steps: int) -> int:
    """Run cmd, teeing its output to log_path, and stop it (SIGTERM to its process group, SIGKILL
    10 s later) once it logs step `steps` in PR #29's format. Returns its exit code, 0 when it was
    stopped here at the step count."""
    workdir.mkdir(parents=True, exist_ok=True)
    stopped = False
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if (m := _PR29_STEP.search(line.strip())) and int(m[1]) >= steps:
                stopped = True
                os.killpg(proc.pid, signal.SIGTERM)
                break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return 0 if stopped else proc.returncode


PR29_BATCH_TOKENS = 524_288  # its Config.batch_tokens


def run_pr29_script(script: Path, train: str, val: str, tokenizer: str, seed: int, steps: int,
                    workdir: Path, log_path: Path, batch_tokens: int = PR29_BATCH_TOKENS) -> RunLog:
    """PR #29's script on the staged shards with its seed pinned, stopped at `steps`; a batch other
    than its own is set through the shim (Config.batch_tokens)."""
    workdir = Path(workdir).resolve()  # the script runs in it, so the shim's path must not be relative to it
    stage_pr29_data(train, val, tokenizer, workdir)
    shim = workdir / "loopgolf_seed_shim.py"
    shim.write_text(SEED_SHIM, encoding="utf-8")
    cmd = [sys.executable, str(shim), str(seed), str(Path(script).resolve())]
    if batch_tokens != PR29_BATCH_TOKENS:
        cmd.append(f"batch_tokens={batch_tokens}")
    env = {**dist.child_env(), "PYTHONUNBUFFERED": "1"}
    code = run_until_step(cmd, env, workdir, log_path, steps)
    out = parse_pr29_log(log_path.read_text(encoding="utf-8", errors="replace"))
    out.exit_code = code
    out.command = f"(cwd {workdir}) " + shlex.join(cmd) + f"  # seed {seed}, stopped at step {steps}"
    return out
