"""What each seed PR's published train_gpt.py needs to run a fixed-step comparison (`loopgolf fidelity --pr N`).

The harness (lab/fidelity.py) sets the challenge's common knobs (DATA_PATH, SEED, ITERATIONS,
MAX_WALLCLOCK_SECONDS=0, ...). That alone does not reproduce a published run: every script's
defaults differ from its README's run command, and its step-denominated knobs are sized for a
~5,000-step, 600 s run. Read from the PRs' code (bench/results/2026-12-02b_fidelity_script_audit):

- with MAX_WALLCLOCK_SECONDS=0 the scripts' warm-down runs over the last WARMDOWN_ITERS
  *iterations*: WARMDOWN_ITERS=3500 at ITERATIONS=200 puts the LR scale at (200 - step) / 3500 <= 0.06
  from step 0. So the step-denominated knobs (warm-down, momentum warm-up, SWA spacing, the step a
  loop switches on, the EMA decay) are set from the preset's fractions of the run, the schedule the
  preset follows in step-count mode (train.budget_s=0): both codes then share one schedule in steps;
- PR #1453's depth ramp (PROG_DEPTH) is read only with a wall-clock cap: without one the script
  trains the whole run at its first stage (2 repeats) and evaluates at 4. A fixed-step run
  therefore trains both codes at full depth (PROG_DEPTH=1.0:4, model.plan_stages="");
- `fast` entries cut phases after training that a 200-step comparison does not need and one GPU
  cannot afford (PR #927's TTT: 489 s on 8 GPUs); each is listed with its reason and can be undone
  with --script-env. The scripts' own compile warm-up steps restore weights, optimizer and loader
  afterwards, so WARMUP_STEPS changes wall time only.

The table holds settings (env names and values of the README run commands), never the PRs' code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from loopgolf.config import RunConfig
from loopgolf.presets import get_preset


def steps_of(frac: float, steps: int) -> int:
    """A fraction of the run in whole optimizer steps, at least 1."""
    return max(1, round(frac * steps))


def stage_frac(cfg: RunConfig) -> float:
    """The run fraction of the preset's first plan-stage switch ("11@0.438" -> 0.438)."""
    return float(cfg.model.plan_stages.split(";")[0].split("@")[1])


@dataclass(frozen=True)
class ScriptProfile:
    pr: int
    preset: str
    records: str  # the script's folder at refs/pull/N/head of openai/parameter-golf
    sha256: str  # of that folder's train_gpt.py: `loopgolf fidelity` refuses another file (a hash, not code)
    seq_len: int
    batch_tokens: int
    published: dict[str, str]  # the README run command's environment
    scaled: Callable[[RunConfig, int], dict[str, str]]  # step knobs from the preset's fractions
    fast: dict[str, str] = field(default_factory=dict)  # post-training shortcuts (see `why`)
    preset_sets: tuple[str, ...] = ()  # --set for the preset so both score the same way
    standin: bool = False  # imports flash_attn_interface (FA3)
    why: dict[str, str] = field(default_factory=dict)  # reason of each fast / fixed-step entry

    def env(self, steps: int, sets: list[str] | None = None) -> dict[str, str]:
        """The script's extra environment for a run of `steps` steps: published, then scaled from the
        preset (with the user's --set applied), then the shortcuts."""
        cfg = get_preset(self.preset).override([*self.preset_sets, *(sets or [])])
        return {**self.published, **self.scaled(cfg, steps), **self.fast}


def _warmdown_momentum(cfg: RunConfig, steps: int) -> dict[str, str]:
    o = cfg.optim
    return {"WARMDOWN_ITERS": str(steps_of(o.warmdown_frac, steps)),
            "MUON_MOMENTUM_WARMUP_STEPS": str(steps_of(o.momentum_warmup_frac, steps))}


def _with_swa(cfg: RunConfig, steps: int) -> dict[str, str]:
    return {**_warmdown_momentum(cfg, steps), "SWA_EVERY": str(steps_of(cfg.optim.swa_every_frac, steps))}


def _lora_mtp(cfg: RunConfig, steps: int) -> dict[str, str]:
    tau = max(1.0, cfg.optim.ema_horizon_frac * steps)  # EMA time constant in steps
    # EMA_START_STEP: PR #21's 100 of its log's 4,518 steps (the preset averages from step 0)
    return {**_warmdown_momentum(cfg, steps), "EMA_DECAY": f"{1.0 - 1.0 / tau:.6f}",
            "EMA_START_STEP": str(round(100 * steps / 4518))}


def _loop45(cfg: RunConfig, steps: int) -> dict[str, str]:
    return {**_warmdown_momentum(cfg, steps), "RECUR_START_STEP": str(steps_of(stage_frac(cfg), steps))}


_LORA_MTP_WHY = {"WARMUP_STEPS": "compile priming only (weights, optimizer and loader restored): 20 -> 3"}

PROFILES: dict[str, ScriptProfile] = {p.preset: p for p in (
    ScriptProfile(
        pr=927, preset="seed-recursive-4b", records="records/track_10min_16mb/2026-03-26_RecursiveTransformer_4B7L_VE_QAT_TTT",
        sha256="bf28da7aaf7d333e8e629368636143be588d73f3308194d2cc115c7ed01b267f",
        seq_len=2048, batch_tokens=524_288,
        published={"NUM_BLOCKS": "4", "MODEL_DIM": "1024", "NUM_HEADS": "32", "NUM_KV_HEADS": "8", "NUM_LOOPS": "7",
                   "VOCAB_SIZE": "1024", "USE_SMEAR_GATE": "1", "BIGRAM_BUCKETS": "10240", "BIGRAM_DIM": "128",
                   "QAT_ENABLED": "1", "QAT_BITS": "6", "QAT_MLP_BITS": "0", "LATE_QAT_THRESHOLD": "1.0",
                   "EMA_DECAY": "0", "SWA_START_FRAC": "0.2", "SWA_EVERY": "50", "SLIDING_WINDOW_STRIDE": "64",
                   "TTT_ENABLED": "1", "TTT_LR": "0.002", "TTT_EPOCHS": "3", "TTT_CHUNK_TOKENS": "32768",
                   "TTT_FREEZE_BLOCKS": "1", "TTT_MOMENTUM": "0.9", "TTT_BATCH_SEQS": "32", "TTT_GRAD_CLIP": "1.0",
                   "XSA_LAST_N": "4", "VE_ENABLED": "1", "VE_DIM": "128", "VE_LAST_N": "2", "MATRIX_LR": "0.02",
                   "SCALAR_LR": "0.01", "TIED_EMBED_LR": "0.02", "MUON_MOMENTUM": "0.99", "WEIGHT_DECAY": "0.04",
                   "GRAD_CLIP_NORM": "0.3", "WARMDOWN_ITERS": "3500", "WARMUP_STEPS": "100"},
        scaled=_with_swa,
        fast={"TTT_ENABLED": "0", "WARMUP_STEPS": "3"},
        preset_sets=("eval.method=plain",),
        why={"TTT_ENABLED": "score-first TTT over all of val: 489 s on 8 GPUs (seed42.log), about an hour on one",
             "WARMUP_STEPS": "compile priming only (weights, optimizer and loader restored): 100 -> 3",
             "eval.method=plain": "the script's round trip is a plain non-overlapping eval at TRAIN_SEQ_LEN"}),
    ScriptProfile(
        pr=21, preset="seed-lora-mtp", records="records/track_10min_16mb/2026-03-18_ImprovedBaseline",
        sha256="e00e43a0dbbcefcf6dcd59a06babf75bd0e5884ad7b77530e14deba44bc486d8",
        seq_len=1024, batch_tokens=524_288, published={"VOCAB_SIZE": "1024"},  # the log's run: script defaults
        scaled=_lora_mtp, fast={"WARMUP_STEPS": "3"}, why=_LORA_MTP_WHY),
    ScriptProfile(
        pr=21, preset="seed-lora-mtp-5x2", records="records/track_10min_16mb/2026-03-18_ImprovedBaseline",
        sha256="e00e43a0dbbcefcf6dcd59a06babf75bd0e5884ad7b77530e14deba44bc486d8",
        seq_len=1024, batch_tokens=524_288,
        published={"VOCAB_SIZE": "1024", "NUM_UNIQUE_LAYERS": "5", "NUM_RECURRENCE": "2", "MODEL_DIM": "704",
                   "LORA_RANK": "16"},  # the PR body's shape (README "Configuration")
        scaled=_lora_mtp, fast={"WARMUP_STEPS": "3"}, why=_LORA_MTP_WHY),
    ScriptProfile(
        pr=1453, preset="seed-shared-3x4",
        records="records/track_non_record_16mb/2026-04-08_DepthRecurrence_Int7MixedQuant_HedgeMixer",
        sha256="d47180f34dbd5ab2b7761c3fc2f77dbb33b4c19e50f51fce0ab4aa40be0fc92f",
        seq_len=1024, batch_tokens=524_288,
        published={"QUANT_LEVELS": "63", "MLP_QUANT_LEVELS": "16", "MODEL_DIM": "880", "NUM_HEADS": "8",
                   "NUM_KV_HEADS": "4", "MLP_MULT": "3", "NUM_LAYERS": "3", "NUM_REPEATS": "4", "XSA_LAST_N": "4",
                   "NUM_VALUE_EMBEDS": "2", "PROG_DEPTH": "0.30:2,0.50:3,1.0:4", "WARMDOWN_ITERS": "3000",
                   "SWA_START_FRAC": "0.6", "SWA_EVERY": "30", "VOCAB_SIZE": "1024"},
        scaled=lambda cfg, steps: {**_with_swa(cfg, steps), "PROG_DEPTH": "1.0:4"},
        fast={"EVAL_STRIDE": "0", "WARMUP_STEPS": "3"},
        preset_sets=("model.plan_stages=", "eval.method=plain"),
        why={"PROG_DEPTH": "the ramp is read only under a wall-clock cap (MAX_WALLCLOCK_SECONDS>0); without one "
                           "the script trains at 2 repeats throughout and evaluates at 4: both train at full depth",
             "model.plan_stages=": "the preset's ramp off, as the script's",
             "EVAL_STRIDE": "skips the sliding (stride 256) and hedge-mixer passes; the hedge pass crashed all three "
                            "published logs (ZeroDivisionError on ranks != 0)",
             "WARMUP_STEPS": "compile priming only (weights, optimizer and loader restored): 20 -> 3",
             "eval.method=plain": "the script's round trip is a plain non-overlapping eval at TRAIN_SEQ_LEN"}),
    ScriptProfile(
        pr=1290, preset="seed-loop45", records="records/track_10min_16mb/2026-04-03_DepthRecurrence_MuonEqR_GPTQ",
        sha256="5ec49771f8fdff261de63e86273da4ed7b63fbb15274e17499ecefca12e2ab5c",
        seq_len=2048, batch_tokens=786_432,
        published={"BIGRAM_VOCAB_SIZE": "3072", "BIGRAM_DIM": "112", "WARMDOWN_ITERS": "4000", "RECUR_LAYERS": "4,5",
                   "RECUR_START_STEP": "3000", "TARGET_MB": "15.9"},
        scaled=_loop45,
        fast={"SWA_ENABLED": "0", "TARGET_MB": "1000", "WARMUP_STEPS": "3"},
        preset_sets=("eval.method=plain", "quant.fit_target=0"),
        standin=True,
        why={"SWA_ENABLED": "its SWA sum is never applied (EMA or LAWA replaces the weights): CPU copies saved",
             "TARGET_MB": "no +-1 pruning search: at 200 steps the artifact may exceed 15.9 MiB and the bisection "
                          "then runs ~22 lzma-9 passes (minutes)",
             "quant.fit_target=0": "the preset does not fit either, so both report unpruned bytes",
             "WARMUP_STEPS": "compile priming only (weights, optimizer and loader restored): 20 -> 3",
             "eval.method=plain": "the script's final_int6_roundtrip is a plain eval at EVAL_SEQ_LEN (2048)"}),
)}

DEFAULT_PRESET_OF_PR = {927: "seed-recursive-4b", 21: "seed-lora-mtp", 1453: "seed-shared-3x4", 1290: "seed-loop45"}


def profile_for(pr: int, preset: str | None = None) -> ScriptProfile:
    """The profile of PR `pr` (its default preset, or `preset` when that is one of the PR's)."""
    if pr not in DEFAULT_PRESET_OF_PR:
        raise ValueError(f"--pr {pr}: no script profile; known: {sorted(DEFAULT_PRESET_OF_PR)}")
    prof = PROFILES.get(preset or DEFAULT_PRESET_OF_PR[pr])
    if prof is None or prof.pr != pr:
        ours = sorted(p.preset for p in PROFILES.values() if p.pr == pr)
        raise ValueError(f"--pr {pr} --preset {preset}: PR #{pr}'s profiles are for {ours}")
    return prof
