"""PR #29's dialect for `loopgolf fidelity`: its log lines parse, its data path gets header-free
shards, its constant seed is pinned by the shim, and its wall-clock loop is stopped at the step
count. The fake script below is written here in PR #29's log format (the PR's code is not stored)."""
import sys

import numpy as np

from loopgolf.data.shards import write_shard
from loopgolf.lab.script_dialects import parse_pr29_log, run_pr29_script, stage_pr29_data

# the format of PR #29's print (step:5d | loss .4f | lr .2e | grad_norm .3f | M tok/s .1f | elapsed .0f)
LOG = """\
Unique parameters: 3,278,336
step    10 | loss 6.1234 | lr 3.00e-04 | grad_norm 1.234 | 2.1M tok/s | 3s elapsed
step    20 | loss 5.5000 | lr 6.00e-04 | grad_norm 0.900 | 2.2M tok/s | 5s elapsed

>>> VALIDATION: loss=5.4000, bpb≈7.7900
"""

FAKE_PR29 = '''
import time
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch


@dataclass
class Config:
    batch_tokens: int = 524288
    seed: int = 42


print(f"batch {Config().batch_tokens}", flush=True)
import torch._dynamo  # defines dataclasses named Config of its own, after the script's (seen on the GPU box)

torch.manual_seed(Config().seed)
# PR #29's loader yields int32 tokens; cross_entropy refuses them unless the shim casts
torch.nn.functional.cross_entropy(torch.zeros(2, 4), torch.tensor([1, 2], dtype=torch.int32))
tokens = np.concatenate([np.fromfile(p, dtype=np.uint16)
                         for p in sorted(Path("./data/datasets/fineweb10B_sp1024/").glob("*train*.bin"))])
assert Path("./data/tokenizers/fineweb_1024_bpe.model").exists()
print(f"max token {int(tokens.max())} n {tokens.size}", flush=True)
step = 0
while True:  # a wall-clock loop with no step limit, as the PR's
    step += 1
    loss = float(torch.rand(1)) + 1.0
    if step % 10 == 0:
        print(f"step {step:5d} | loss {loss:.4f} | lr 3.00e-03 | grad_norm 1.000 | 1.0M tok/s | {step * 0.1:.0f}s elapsed", flush=True)
    time.sleep(0.002)
'''


def test_parse_pr29_log():
    r = parse_pr29_log(LOG)
    assert r.train_loss == {10: 6.1234, 20: 5.5}  # the validation line is not a train loss
    assert r.loss_window == 10  # its loss is running_loss / 10 (L475-481)
    assert r.steps == 20 and r.ms_per_step == 250.0  # 5 s / 20 steps
    assert r.roundtrip_bpb is None and r.total_bytes is None  # the PR prints no comparable figures


def test_staged_shards_have_no_header(tmp_path):
    tokens = np.arange(1000, dtype=np.int64) % 1024
    write_shard(tmp_path / "a_train_000000.bin", tokens)
    write_shard(tmp_path / "a_val_000000.bin", tokens[:100])
    (tmp_path / "tok.model").write_bytes(b"x")
    data = stage_pr29_data(str(tmp_path / "a_train_*.bin"), str(tmp_path / "a_val_*.bin"),
                           str(tmp_path / "tok.model"), tmp_path / "work")
    assert np.array_equal(np.fromfile(data / "fineweb_train_000000.bin", dtype=np.uint16), tokens)
    assert np.fromfile(data / "fineweb_val_000000.bin", dtype=np.uint16).size == 100


def _fake_pr29(tmp_path):
    """Shards of 5,000 / 500 tokens, a tokenizer file and the fake script, in tmp_path."""
    tokens = np.arange(5000, dtype=np.int64) % 1024
    write_shard(tmp_path / "s_train_000000.bin", tokens)
    write_shard(tmp_path / "s_val_000000.bin", tokens[:500])
    (tmp_path / "tok.model").write_bytes(b"x")
    script = tmp_path / "fake_pr29.py"
    script.write_text(FAKE_PR29)
    return script


def test_run_stops_at_the_step_count_and_pins_the_seed(tmp_path):
    script = _fake_pr29(tmp_path)
    runs = {}
    for name, seed in (("a", 1337), ("b", 1337), ("c", 42)):
        runs[name] = run_pr29_script(script, str(tmp_path / "s_train_*.bin"), str(tmp_path / "s_val_*.bin"),
                                     str(tmp_path / "tok.model"), seed, 30, tmp_path / name, tmp_path / f"{name}.log")
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert a.exit_code == 0 and sorted(a.train_loss) == [10, 20, 30] and a.steps == 30
    assert a.train_loss == b.train_loss and a.train_loss != c.train_loss  # the shim's seed decides
    assert "max token 1023 n 5000" in (tmp_path / "a.log").read_text()  # no header read as tokens
    assert "seed 1337" in a.command and sys.executable in a.command


def test_batch_other_than_the_published_one_is_set_in_its_config(tmp_path):
    script = _fake_pr29(tmp_path)
    args = (script, str(tmp_path / "s_train_*.bin"), str(tmp_path / "s_val_*.bin"), str(tmp_path / "tok.model"), 1337, 10)
    half = run_pr29_script(*args, tmp_path / "h", tmp_path / "h.log", batch_tokens=262144)
    full = run_pr29_script(*args, tmp_path / "f", tmp_path / "f.log")
    assert "batch 262144" in (tmp_path / "h.log").read_text() and "batch_tokens=262144" in half.command
    assert "batch 524288" in (tmp_path / "f.log").read_text() and "batch_tokens" not in full.command
    assert half.exit_code == full.exit_code == 0
