"""Each preset builds at its real size with its pinned parameter count, every parameter has exactly one
optimizer rule, and a scaled-down copy trains a few steps on CPU."""
import dataclasses

import pytest
import torch

from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import PRESETS, get_preset
from loopgolf.presets_frontier import FRONTIER_PRESETS
from loopgolf.train.loop import Trainer
from loopgolf.train.optim import assign_groups

PINNED = {
    "baseline": 17_059_912,  # NaiveBaseline train.log
    "universal": 3_478_536,
    "seed-universal-mqa": 3_478_536,
    "seed-shared-3x4": 23_662_344,  # PR #1453, as published
    "seed-loop45": 26_906_713,  # record (a)'s variant: 30,352,046 (differences in the docstring)
    "seed-recursive-4b": 29_950_083,  # PR #927: 29,950,082 (one VE scale per layer here)
    "record-loop345": 35_944_536,  # record (d), as published
    "seed-lora-mtp": 23_489_320,  # no published count; 22,309,672 ship (MTP heads are training-only)
    "demo": 361_864,
    "tiny": 38_342,
}


def test_every_preset_is_pinned():
    assert set(PINNED) == set(PRESETS) - set(FRONTIER_PRESETS)  # those: tests/test_presets_frontier.py


@pytest.mark.parametrize("name", sorted(PINNED))
def test_preset_parameter_count_and_rules(name):
    model = GPT(get_preset(name).model)
    assert model.num_params() == PINNED[name]
    groups = assign_groups(model)  # raises unless every parameter matches one PARAM_KINDS row
    assert sum(p.numel() for ps in groups.values() for _, p in ps) == PINNED[name]


def scaled_down(name: str):
    cfg = get_preset(name)
    m = cfg.model
    heads = 4
    kv = 1 if m.n_kv_heads == 1 else 2
    cfg.model = dataclasses.replace(
        m, vocab_size=512, dim=64, n_heads=heads, n_kv_heads=kv, mlp_hidden=96,
        rope_dims=8 if m.rope_dims else 0, bigram_buckets=64 if m.bigram_buckets else 0, bigram_dim=16,
        ve_dim=16 if m.ve_dim else 0)
    cfg.data.seq_len = 32
    cfg.train = dataclasses.replace(cfg.train, batch_tokens=512, micro_batch_seqs=8, budget_s=0.0,
                                    max_steps=6, compile=False, warmup_steps=0, log_every=1)
    return cfg.validate()


@pytest.mark.parametrize("name", [n for n in sorted(PINNED) if n not in ("tiny", "demo")])
def test_scaled_down_preset_trains(name, tiny_shards, tmp_path):
    cfg = scaled_down(name)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    loader = BatchLoader(TokenStream(tiny_shards["train"]), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, 0, 1, torch.device("cpu"))
    tr = Trainer(cfg, model, loader, torch.device("cpu"), Logger(None, echo=False))
    losses = []
    step = tr._train_step
    tr._train_step = lambda: losses.append(step().item()) or torch.tensor(losses[-1])
    res = tr.run()
    assert res["steps"] == 6 and all(l == l for l in losses)  # finite
    assert losses[-1] < losses[0]
    assert tr.stage == len(model.stages) - 1  # ends on the final plan
