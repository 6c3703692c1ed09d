"""Named runs: each preset is a function returning a RunConfig.

Data paths are left empty in presets (set them with --set data.train=... or use `loopgolf demo`).
Change a preset with `--set section.field=value`; add one by writing a function and listing it in
PRESETS, never by copying a script.
"""
from __future__ import annotations

import re
from typing import Callable

from loopgolf.config import ConfigError, ModelConfig, OptimConfig, RunConfig, TrainConfig
from loopgolf.presets_frontier import FRONTIER_PRESETS


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


def seed_universal_mqa() -> RunConfig:
    """Seed 1 (Universal Transformer): one shared block x 12 loops, MQA 8Q/1KV, SwiGLU, full RoPE,
    tied embeddings; the `universal` preset under its seed name (3,478,536 parameters).

    Deviations from PR #29 (fidelity.md 000): the baseline's block (U-Net skips, resid_mix, QK-norm,
    q_gain, softcap, zero-init projections; PR: plain pre-norm with learned RMSNorm weights,
    L75-83, L198-201), SwiGLU hidden 1536 (PR 1408, L177-179), Muon + Adam with the baseline's LRs
    (PR: AdamW 3e-3 cosine to 3e-4, 100-step warm-up, WD 0.1, clip 1.0, L53-57, L304-315, L424),
    kaiming init (PR: N(0, 0.02), output projections 0.02/sqrt(24), L233-240), int8_row + zlib (PR:
    per-tensor int8, L332). Count 3,478,536 vs the PR log's 3,278,336: +196,608 MLP width, +3,072
    skips, +2,048 scales/resid_mix, +8 q_gain, -1,536 RMSNorm weights."""
    cfg = universal()
    cfg.name = "seed-universal-mqa"
    return cfg


def seed_shared_3x4() -> RunConfig:
    """Seed PR #1453 (techniques.md 4f1): 3 shared blocks x 4 repeats at d=880, 8/4 heads, LeakyReLU^2
    MLP 3x, per-virtual-layer loop embeddings, a cross-repeat skip (each block's previous-repeat output,
    3x3x880 scales), 2 full-width value embeddings added to the residual with 12x2x880 scales, XSA on
    the last 4 virtual layers, no U-Net, progressive depth 2 -> 3 -> 4 repeats at 30% / 50% of the
    budget, SWA from 60%. 23,662,344 parameters, as published. Differences from the published script:
    the depth ramp compiles all three graphs before the clock instead of recompiling mid-run, and SWA
    snapshots are spaced by run fraction instead of every 30 steps.
    Runs eager (train.compile=false): under torch.compile (torch 2.11, H200) this model diverges from
    the first steps while the same run in eager mode trains, at d=880 only (d=768 compiles fine);
    neither the SDPA head dim (110) nor inductor's mix-order reduction is the cause
    (bench/results/2026-11-22_seed-shared-3x4_compile_divergence). Eager costs ~2-3x per step.

    Deviations from PR #1453 (../shared/docs/fidelity.md 003), kept until issue 13 lands: no grad clip
    (PR: 0.3, L101); value-embedding tables init std 0.005 (PR: nn.Embedding's N(0,1), L913); export
    int8_row + zlib (PR: int7 attention / int5 MLP with a 5-percentile search, zstd-22, L498-539);
    SWA from 60 % of the run (PR: when the LR scale < 0.6, ~63 %); plain eval (PR: sliding stride 256).
    """
    return RunConfig(
        name="seed-shared-3x4",
        model=ModelConfig(dim=880, n_heads=8, n_kv_heads=4, mlp="leaky_relu2", mlp_hidden=2640, plan="3x4",
                          plan_stages="3x2@0.3;3x3@0.5", unet_skips=False, loop_embed=True,
                          cross_repeat=True, value_embeds=2, xsa_last=4),
        optim=OptimConfig(matrix_lr=0.018, tied_embed_lr=0.021, scalar_lr=0.018, weight_decay=0.04,
                          momentum_warmup_frac=0.1, warmdown_frac=0.7, swa_start_frac=0.6, swa_every_frac=0.007),
        train=TrainConfig(budget_s=600.0, compile=False),
    )


def seed_loop45() -> RunConfig:
    """Mini recurrence (record (a) lineage, PR #1204/#1285): 11 layers d=512, 8/4 heads, LeakyReLU^2 MLP
    3x, layers 4-5 run twice (13 virtual layers) once 48% of the budget has passed (record (a): step 3000
    of ~6,240), sigmoid-gated U-Net skips, XSA on every virtual layer, partial RoPE 16, LN scale,
    BigramHash 3072x112, MuonEq-R, Muon/Adam weight decay 0.04, grad clip 0.3, EMA, seq 2048,
    786,432 tokens per step. 26,906,713 parameters. Record (a)'s variant has 30,352,046: it also unties
    the repeated MLPs (+3,145,728), uses a 2816-row bigram table (-28,672), VE128 on layers 9-10
    (+163,842), a static SmearGate (+512), two-lane parallel residuals and per-virtual-layer block
    scalars; those stay available as config fields (model.untie_repeat_mlp, ve_dim, smear_gate, ...).

    Deviations from PR #1290 (fidelity.md 004; this preset follows record (a) instead): no VE128 on
    layers 9-10 (L874), no SmearGate (L837), 6 gated skips (PR: 5 plain additive, L964-970),
    matrix_lr 0.03 (PR 0.025), warm-down 56 % (PR 4000 iterations ~65 %), no embedding WD (PR 0.04),
    bigram.proj in Muon (PR: Adam, L1882), loops on at 48 % (PR: step 3000 = 43.8 % of wall time),
    kaiming not orthogonal init; export int8_row + zlib (PR: self-generated-text GPTQ int6, int8
    embeddings, +-1 pruning, LZMA-9). Published bugs not copied: Hessians from a non-recurrent model
    (L1571-1640), TARGET_MB in MiB (over the cap, L2219), RoPE length hard-coded 1024 (L873).
    Count 26,906,713 vs the PR log's 27,067,484 (the missing VE128 and SmearGate).
    """
    return RunConfig(
        name="seed-loop45",
        model=ModelConfig(mlp="leaky_relu2", mlp_hidden=1536, plan="11:4-5x2", plan_stages="11@0.48",
                          skip_gated=True, xsa_last=-1, rope_dims=16, ln_scale=True, bigram_buckets=3072,
                          bigram_dim=112),
        optim=OptimConfig(matrix_lr=0.03, tied_embed_lr=0.035, scalar_lr=0.025, momentum=0.99,
                          momentum_warmup_start=0.92, momentum_warmup_frac=0.24, muon_row_norm=True,
                          weight_decay=0.04, adam_weight_decay=0.04, grad_clip=0.3, warmdown_frac=0.56,
                          ema_horizon_frac=0.05),
        train=TrainConfig(batch_tokens=786_432, micro_batch_seqs=32, budget_s=600.0),
    ).override(["data.seq_len=2048"])


def seed_recursive_4b() -> RunConfig:
    """Seed PR #927 (techniques.md 4f2): 4 shared blocks cycled over 7 virtual layers (0 1 2 3 0 1 2),
    d=1024, 32/8 heads, ReLU^2 MLP 2x, attention/MLP scales and resid_mix per virtual layer, U-Net
    skips across loops (3 encoder / 4 decoder), XSA on the last 4 virtual layers, VE128 injected into V
    on virtual layers 5 and 6, SmearGate, BigramHash 10240x128, seq 2048, SWA. 29,950,083 parameters:
    one more than published (29,950,082): BigramHash's `bigram.scale`, which the PR does not have
    (fidelity.md 001; an earlier docstring blamed the V-injection scales).
    Intended behaviour, not the published one: PR #927 set the XSA flag on the shared block objects,
    so all 4 blocks ran XSA on every visit; here XSA applies to the last 4 virtual layers only.

    Deviations from PR #927 (fidelity.md 001): LRs matrix/scalar/tied 0.04/0.04/0.05 (PR
    0.02/0.01/0.02), momentum 0.95 (PR 0.99), no weight decay (PR 0.04 on Muon and both AdamWs), no
    grad clip (PR 0.3), no int6 STE QAT from step 0 (L1184), warm-down 50 % (PR 3500 iterations ~59 %),
    SWA from 70 % (PR: when the LR scale < 0.2); BigramHash uses record (a)'s XOR hash with a 0.05
    scale and std-0.02 table (PR: (prev*92821 + cur) mod B, no scale, std 0.01, L656-672); SmearGate
    init -3 before rms_norm with a BOS mask (PR: init 0 after rms_norm, no mask, L649, L807-809); VE
    scales start at 0 and the table std 0.02 (PR: 1 and 0.01, L640-641); kaiming not orthogonal init
    (L775-786); TTT does not freeze block 0 (L948-960); export int8_row + zlib (PR: int6 blocks and
    bigram.proj, int8 embeddings, zstd-22, L370-376, L1492-1500).
    """
    return RunConfig(
        name="seed-recursive-4b",
        model=ModelConfig(dim=1024, n_heads=32, n_kv_heads=8, mlp_hidden=2048, plan="4c7",
                          per_layer_scales=True, xsa_last=4, ve_dim=128, ve_layers="5,6", smear_gate=True,
                          bigram_buckets=10240, bigram_dim=128),
        optim=OptimConfig(warmdown_frac=0.5, momentum_warmup_frac=0.1, swa_start_frac=0.7, swa_every_frac=0.02),
        train=TrainConfig(micro_batch_seqs=32, budget_s=600.0),
    ).override(["data.seq_len=2048"])


def record_loop345() -> RunConfig:
    """The April record shape (record (d), PR #1493): 11 layers d=512, 8/4 heads, LeakyReLU^2 MLP 4x,
    layers 3-5 run three times (17 virtual layers) from 35% of the budget, single-lane parallel
    residuals from layer 7, QK gain 5.25, XSA on all layers, partial RoPE 16, LN scale, sigmoid-gated
    skips, vocab 8192, MuonEq-R, Muon WD 0.095, EMA, warm-down 72%. 35,944,536 parameters, as
    published (35,943,512 for record (c)'s 15-layer loop: one skip pair fewer).

    Deviations from PR #1493 (fidelity.md): export int8_row + zlib (PR: GPTQ int6 SDClip k=12.85, int8
    embeddings k=20 with GPTQ on the embedding, byte-shuffle + brotli); kaiming not orthogonal init;
    a sequential loader (PR: shuffled); plain eval (PR: sliding + score-first TTT). The later frontier
    (PR #1855) additions are not in this preset (issue 14).
    """
    return RunConfig(
        name="record-loop345",
        model=ModelConfig(vocab_size=8192, mlp="leaky_relu2", mlp_hidden=2048, plan="11:3-5x3",
                          plan_stages="11@0.35", parallel_from=7, qk_gain_init=5.25, xsa_last=-1,
                          rope_dims=16, ln_scale=True, skip_gated=True),
        optim=OptimConfig(matrix_lr=0.022, tied_embed_lr=0.03, scalar_lr=0.02, momentum=0.99,
                          momentum_warmup_start=0.92, momentum_warmup_frac=0.33, muon_row_norm=True,
                          weight_decay=0.095, adam_weight_decay=0.02, embed_weight_decay=0.085,
                          grad_clip=0.3, warmdown_frac=0.72, ema_horizon_frac=0.06),
        train=TrainConfig(batch_tokens=786_432, micro_batch_seqs=32, budget_s=600.0),
    ).override(["data.seq_len=2048"])


def seed_lora_mtp() -> RunConfig:
    """Seed 3 (no published count): 5 unique blocks x 2 loops at d=768, 8/4 heads, ReLU^2 MLP 2x,
    a rank-16 LoRA on attention q/k/v/o for every virtual layer (each loop of a shared block gets its
    own low-rank correction), 2 multi-token-prediction heads (tokens t+2, t+3; training-only, stripped
    from the artifact), EMA. The seed's other shape, 4 x 3 at d=704 with rank 32, is
    `--set model.plan=4x3 --set model.dim=704 --set model.mlp_hidden=1408 --set model.lora_rank=32`.
    The LoRA stacks are trained by Muon at optim.matrix_lr, as PR #21 trains its adapters (earlier
    versions gave them Adam at scalar_lr; tests/golden was regenerated for this preset only).

    Deviations from PR #21 (fidelity.md 002): one LoRA per virtual layer (PR: one adapter set per
    extra loop, shared by the blocks, none on loop 0, L716-724, L761); ReLU^2 MLP (PR: SwiGLU at 2/3
    width, L623-635); no recurrence_scales (L759); MTP weight 0.3 (PR 0.15, L73); warm-down 50 % (PR
    1200 iterations ~27 %); shape 5x2 d768 r16 mixes the PR's two shapes (5x2 d704 r16 in its body,
    4x3 d768 r32 in its final code, whose log counts 17,671,712 parameters).
    """
    return RunConfig(
        name="seed-lora-mtp",
        model=ModelConfig(dim=768, n_heads=8, n_kv_heads=4, mlp_hidden=1536, plan="5x2", lora_rank=16,
                          mtp_heads=2),
        optim=OptimConfig(warmdown_frac=0.5, momentum_warmup_frac=0.1, ema_horizon_frac=0.05),
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
    """Seconds-long CPU config for tests: vocab 512, d=32, plan 1+1x2+1, seq 32, 8 steps.
    train.budget_s=0 means no time budget, so max_steps alone bounds the run (deterministic steps)."""
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
    "seed-universal-mqa": seed_universal_mqa,
    "seed-shared-3x4": seed_shared_3x4,
    "seed-loop45": seed_loop45,
    "seed-recursive-4b": seed_recursive_4b,
    "record-loop345": record_loop345,
    "seed-lora-mtp": seed_lora_mtp,
    "demo": demo,
    "tiny": tiny,
}
PRESETS.update(FRONTIER_PRESETS)  # record-frontier, record-frontier-2135 (presets_frontier.py)


def summary(name: str) -> str:
    """The first sentence of a preset's docstring, on one line (for `loopgolf presets`)."""
    text = " ".join((PRESETS[name].__doc__ or "").split())
    return re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<!vs\.)(?<=[.!?])\s+", text, maxsplit=1)[0]


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
