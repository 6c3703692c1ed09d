"""The compile warm-up (train/warmup.py): every shape warmed once, its seconds split per phase."""
from __future__ import annotations

import time

import pytest
import torch

from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.loop import Trainer
from loopgolf.train.warmup import PHASES

COMPILE_S = 1.0  # what the stand-in backend spends "compiling" each graph


def _trainer(tiny_shards, extra=()):
    cfg = get_preset("tiny").override(["train.max_steps=4", *extra])
    torch.manual_seed(cfg.train.seed)
    loader = BatchLoader(TokenStream(tiny_shards["train"]), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, 0, 1, torch.device("cpu"))
    return Trainer(cfg, GPT(cfg.model), loader, torch.device("cpu"), Logger(None, echo=False))


def _slow_backend(gm, example_inputs):
    time.sleep(COMPILE_S)
    return gm.forward


@pytest.mark.parametrize("qat, keys", [
    ("noise", ["0/16/0", "0/16/1", "0/32/0", "0/32/1", "1/32/0", "1/32/1"]),  # QAT in the forward
    ("ste", ["0/16/0", "0/32/0", "1/32/0"]),  # weight values swapped outside the graph: no QAT graphs
])
def test_warmup_seconds_are_recorded_per_shape_and_phase(tiny_shards, qat, keys):
    """Rows of 16 then 32, the loops on from 50 %, QAT switching on late: each (stage, row
    length, qat) key gets its first step, other steps and check seconds; the graph compiles land
    in the first step of their key, not in the other steps. Only noise QAT is a graph of its own;
    after the warm-up QAT is off again, as the run starts."""
    tr = _trainer(tiny_shards, ("model.plan_stages=1+1x1+1@0.5", "train.seq_len_schedule=16@0.25",
                                "train.warmup_steps=2", f"quant.qat={qat}", "quant.qat_start_frac=0.75",
                                "quant.passthrough_max_numel=16", "train.compile_check=true"))
    tr.model = torch.compile(tr.raw_model, backend=_slow_backend, dynamic=False)
    torch._dynamo.reset()
    total = tr.warmup()
    by_shape = tr.compile_stats["warmup_s_by_shape"]
    assert tr.qat_names and not tr.qat_on and sorted(by_shape) == keys
    for key, secs in by_shape.items():
        assert tuple(secs) == PHASES and all(v >= 0 for v in secs.values())
        assert secs["first_step"] >= COMPILE_S, (key, secs)  # forward + backward graphs compile here
        assert secs["other_steps"] < COMPILE_S, (key, secs)  # the graphs are reused: no compile
    assert set(tr.compile_stats["check"]) == set(by_shape)
    assert sum(sum(s.values()) for s in by_shape.values()) <= total + 0.05


def test_eager_trainer_has_no_warmup(tiny_shards):
    tr = _trainer(tiny_shards)
    assert tr.warmup() == 0.0 and "warmup_s_by_shape" not in tr.compile_stats
