"""The challenge's reference `train_gpt.py` as a benchmark arm (`loopgolf bench run --reference PATH`).

The script is user-supplied (never stored here). It runs on the same shards (linked under the names it
globs, lab/fidelity.py), with the same wall-clock budget and batch, one GPU, after the loopgolf
presets; its log gives steps, ms/step, the round-trip val_bpb and the submission bytes. tokens/s is
TRAIN_BATCH_TOKENS / step_avg, the same quantity loopgolf's result.json reports, so the printed
ratio is like for like.
"""
from __future__ import annotations

import json
from pathlib import Path

from loopgolf import dist
from loopgolf.lab.fidelity import RunLog, run_script, stage_challenge_data


def reference_env(data: Path, tokenizer: str, budget_s: float, batch_tokens: int, seq_len: int,
                  seed: int = 1337) -> dict[str, str]:
    """The reference script's knobs for a wall-clock run like `loopgolf bench run`'s."""
    return {"DATA_PATH": str(data), "TOKENIZER_PATH": str(Path(tokenizer).resolve()), "SEED": str(seed),
            "MAX_WALLCLOCK_SECONDS": str(budget_s), "TRAIN_BATCH_TOKENS": str(batch_tokens),
            "TRAIN_SEQ_LEN": str(seq_len), "VAL_LOSS_EVERY": "0", "RUN_ID": "reference"}


def summarize_reference(log: RunLog, batch_tokens: int) -> dict:
    steps = log.steps or (max(log.train_loss) if log.train_loss else 0)
    out = {"preset": "reference train_gpt.py", "exit_code": log.exit_code, "command": log.command,
           "steps": steps, "ms_per_step": log.ms_per_step, "val_bpb": log.roundtrip_bpb,
           "total_bytes": log.total_bytes}
    if log.ms_per_step:
        out["tokens_per_s"] = round(batch_tokens / (log.ms_per_step / 1000.0), 1)
    return out


def run_reference(script: Path, shards: Path, tokenizer: str, budget_s: float, out: Path,
                  batch_tokens: int = 524_288, seq_len: int = 1024, gpu: int = 0,
                  launcher: list[str] | None = None) -> dict:
    data = stage_challenge_data(f"{shards}/*_train_*.bin", f"{shards}/*_val_*.bin", out / "reference_data")
    pinned = {k: v for k, v in dist.child_env(gpu).items() if k in ("CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED")}
    env = {**pinned, **reference_env(data, tokenizer, budget_s, batch_tokens, seq_len)}
    log = run_script(script, env, out / "reference_run", out / "reference.log", launcher=launcher)
    res = summarize_reference(log, batch_tokens)
    (out / "reference.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    return res


def speed_ratios(results: list[dict], reference: dict) -> dict[str, float]:
    """tokens/s of each preset over the reference's (> 1: faster than the reference script)."""
    ref = reference.get("tokens_per_s")
    return {r["preset"]: round(r["tokens_per_s"] / ref, 3) for r in results
            if ref and r.get("tokens_per_s")}
