"""Named runs: each preset is a function returning a RunConfig.

Data paths are left empty in presets (set them with --set data.train=... or use `loopgolf demo`).
Change a preset with `--set section.field=value`; add one by writing a function and listing it in
PRESETS, never by copying a script.
"""
from __future__ import annotations

from typing import Callable

from loopgolf.config import ConfigError, ModelConfig, OptimConfig, RunConfig, TrainConfig


def baseline() -> RunConfig:
    """The challenge's naive baseline (techniques.md 2): 9 blocks x 512, 8 heads / 4 KV, ReLU^2 MLP 2x,
    vocab 1024, seq 1024, 524,288 tokens per step, Muon 0.04 + Adam, 17,059,912 parameters.
    Its schedules are kept in the baseline's own units for a faithful reproduction: momentum warm-up
    over 500 steps, warm-down over 1,200 steps' worth of wall clock (baseline L924-933, L1021-1024).
    """
    return RunConfig(
        name="baseline",
        model=ModelConfig(),
        optim=OptimConfig(momentum_warmup_steps=500, warmdown_iters=1200),
        train=TrainConfig(budget_s=600.0),
    )


def universal() -> RunConfig:
    """One shared block run 12 times (a Universal Transformer): MQA 8 query heads / 1 KV head,
    SwiGLU with hidden 1536 -> 3,478,536 unique parameters for the depth of a 12-layer model.
    U-Net skips pair the first 6 visits with the last 6. Schedules are fractions of the budget.
    """
    return RunConfig(
        name="universal",
        model=ModelConfig(plan="1x12", n_kv_heads=1, mlp="swiglu", mlp_hidden=1536),
        optim=OptimConfig(momentum_warmup_frac=0.25, warmdown_frac=0.6),
        train=TrainConfig(budget_s=600.0),
    )


def demo() -> RunConfig:
    """A looped model small enough to train on 2 CPU cores in under two minutes (`loopgolf demo`):
    2 shared blocks x 3 loops at d=128, seq 256, 8,192 tokens per step."""
    return RunConfig(
        name="demo",
        model=ModelConfig(dim=128, n_heads=4, n_kv_heads=2, mlp_hidden=256, plan="2x3"),
        optim=OptimConfig(matrix_lr=0.03, tied_embed_lr=0.05, momentum_warmup_frac=0.1,
                          warmdown_frac=0.5),
        train=TrainConfig(batch_tokens=8192, micro_batch_seqs=32, budget_s=100.0, max_steps=100_000,
                          warmup_steps=0, log_every=10, val_every=0),
    ).override(["data.seq_len=256"])


def tiny() -> RunConfig:
    """Seconds-long CPU config for tests: vocab 64 is too small for real tokenizers."""
    return RunConfig(
        name="tiny",
        model=ModelConfig(vocab_size=512, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="1+1x2+1"),
        optim=OptimConfig(warmdown_frac=0.3),
        train=TrainConfig(batch_tokens=1024, micro_batch_seqs=8, budget_s=0.0, max_steps=8,
                          warmup_steps=0, log_every=1, compile=False),
    ).override(["data.seq_len=32"])


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "baseline": baseline,
    "universal": universal,
    "demo": demo,
    "tiny": tiny,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
