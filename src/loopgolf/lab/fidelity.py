"""`loopgolf fidelity`: a published `train_gpt.py` and its loopgolf preset, side by side.

Both run on the same shards with the same seed, global batch, sequence length and a fixed step
count, with schedules keyed to that step total (the script with MAX_WALLCLOCK_SECONDS=0, loopgolf
with train.budget_s=0), and the report gives the train loss at every step both logged, the mean
|loss difference| over windows of steps, ms/step of each, and the artifact bytes and round-trip
val_bpb of each. Running the published script with a second seed measures the seed-to-seed spread the
difference is judged against (`--script-seeds 1337 42`).

The published script is never stored in this repository: the user passes its path. It reads its
data from DATA_PATH/fineweb_{train,val}_*.bin, so the shards are linked under those names in a
staging folder. Scripts that import FlashAttention-3 (`flash_attn_interface`) where it is not
installed get an SDPA stand-in module on PYTHONPATH (`--sdpa-standin`), and the report says so.
Data order differs slightly: the challenge's loader reads `local_tokens + 1` tokens per micro-batch
and loopgolf `batch_tokens + 1` per step, so the two runs see the same stream at offsets that drift
by one token per micro-batch; the comparison is statistical, hence the measured spread.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loopgolf import dist
from loopgolf.data.shards import list_shards, load_shard, write_shard

_STEP = re.compile(r"step:\s*(\d+)(?:/\d+)?\b(.*)$")
_TRAIN_LOSS = re.compile(r"train_loss:\s*([0-9.]+(?:e-?\d+)?)")
_STEP_AVG = re.compile(r"step_avg:\s*([0-9.]+)ms")
_TRAIN_TIME = re.compile(r"train_time:\s*([0-9.]+)ms")
# final_int8_zlib_roundtrip (challenge), final_roundtrip (PR #1453), final_int6_roundtrip (PR #1290)
_ROUNDTRIP = re.compile(r"final_(?:\w+?_)?roundtrip(_exact)?\s+val_loss:\s*([0-9.]+)\s+val_bpb:\s*([0-9.]+)")
_TOTAL = re.compile(r"Total submission size[^:]*:\s*(\d+)\s*bytes")

# The seed systems and the preset that reproduces each (README "Fidelity").
PRESET_OF_PR = {29: "seed-universal-mqa", 927: "seed-recursive-4b", 21: "seed-lora-mtp",
                1453: "seed-shared-3x4", 1290: "seed-loop45", 1493: "record-loop345"}

SDPA_STANDIN = '''"""SDPA stand-in for FlashAttention-3's flash_attn_interface, written by `loopgolf fidelity`.
q, k, v are (B, T, H, D) as FA3 takes them; GQA when k/v have fewer heads."""
import torch
import torch.nn.functional as F


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, *args, **kwargs):
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, scale=softmax_scale,
                                       enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)
'''


@dataclass
class RunLog:
    """What one run printed: train loss by step, mean ms/step, artifact bytes, round-trip bpb."""

    train_loss: dict[int, float] = field(default_factory=dict)
    ms_per_step: float | None = None
    # from the first logged step's clock to the last's: without step 1, where the published scripts
    # still compile (PR #1453: 18 s of its 231 s), so two codes compare at their steady speed
    steady_ms_per_step: float | None = None
    total_bytes: int | None = None
    roundtrip_bpb: float | None = None
    steps: int = 0  # the last step number the log shows
    loss_window: int = 1  # each logged loss is the mean over this many steps ending at its step
    exit_code: int = 0
    command: str = ""


def parse_script_log(text: str) -> RunLog:
    """Parse the challenge's log lines (`step:N/M train_loss:X ... step_avg:Sms`,
    `Total submission size ...: N bytes`, `final_[*_]roundtrip[_exact] val_loss:.. val_bpb:..`).
    The first `_exact` round-trip line wins: PR #1290 prints its sliding-window score again later as
    `final_int8_zlib_roundtrip_exact`."""
    out = RunLog()
    exact_seen = False
    clock: dict[int, float] = {}
    for line in text.splitlines():
        if m := _STEP.search(line):
            # step_avg from every step line, the final val line too: a wall-clock run logs train loss
            # only every few hundred steps, and its last step shows up on the val line alone
            out.steps = max(out.steps, int(m[1]))
            if avg := _STEP_AVG.search(m[2]):
                out.ms_per_step = float(avg[1])
            if loss := _TRAIN_LOSS.search(m[2]):
                out.train_loss[int(m[1])] = float(loss[1])
                if t := _TRAIN_TIME.search(m[2]):
                    clock[int(m[1])] = float(t[1]) / 1000
        if m := _TOTAL.search(line):
            out.total_bytes = int(m[1])
        if (m := _ROUNDTRIP.search(line)) and not exact_seen:
            out.roundtrip_bpb = float(m[3])  # the first _exact line, when present, wins
            exact_seen = bool(m[1])
    out.steady_ms_per_step = steady_ms(clock)
    return out


def steady_ms(clock: dict[int, float]) -> float | None:
    """ms/step between the first and the last step of {step: seconds on the train clock at its end}."""
    if len(clock) < 2:
        return None
    first, last = min(clock), max(clock)
    return round(1000 * (clock[last] - clock[first]) / (last - first), 2)


def parse_run_dir(run_dir: Path) -> RunLog:
    """A loopgolf run's train losses (metrics.jsonl) and its result.json figures."""
    out = RunLog()
    metrics = run_dir / "metrics.jsonl"
    clock: dict[int, float] = {}
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("event") == "train" and "loss" in rec:
                out.train_loss[int(rec["step"])] = float(rec["loss"])
                if "train_s" in rec:
                    clock[int(rec["step"])] = float(rec["train_s"])
    out.steady_ms_per_step = steady_ms(clock)
    result = run_dir / "result.json"
    if result.is_file():
        res = json.loads(result.read_text(encoding="utf-8"))
        out.ms_per_step = res.get("ms_per_step")
        out.steps = int(res.get("steps", 0))
        out.total_bytes = res.get("total_bytes")
        out.roundtrip_bpb = res.get("val_bpb", res.get("val_bpb_prequant"))
    return out


def stage_challenge_data(train: str, val: str, out: Path, val_tokens: int = 0) -> Path:
    """Link shards as DATA_PATH/fineweb_{train,val}_NNNNNN.bin, the names the published scripts glob.
    val_tokens > 0: one val shard holding the first val_tokens + 1 tokens instead (every eval pass of
    the script scores val_tokens targets; the preset is pointed at the same file)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("fineweb_*.bin"):
        old.unlink()
    for i, path in enumerate(list_shards(train)):
        (out / f"fineweb_train_{i:06d}.bin").symlink_to(Path(path).resolve())
    if val_tokens <= 0:
        for i, path in enumerate(list_shards(val)):
            (out / f"fineweb_val_{i:06d}.bin").symlink_to(Path(path).resolve())
        return out
    parts, have = [], 0
    for path in list_shards(val):
        if have > val_tokens:
            break
        parts.append(np.asarray(load_shard(path))[: val_tokens + 1 - have])
        have += parts[-1].size
    if have < val_tokens + 1:
        raise ValueError(f"--val-tokens {val_tokens}: the val shards {val!r} hold only {have} tokens")
    write_shard(out / "fineweb_val_000000.bin", np.concatenate(parts))
    return out


def compare_curves(a: dict[int, float], b: dict[int, float], window: int) -> dict:
    """Mean |a - b| over the steps both logged, overall and per window of `window` steps."""
    common = sorted(set(a) & set(b))
    if not common:
        return {"common_steps": 0, "mean_abs_diff": None, "windows": []}
    diffs = {s: abs(a[s] - b[s]) for s in common}
    windows = []
    for lo in range(0, common[-1], window):
        inside = [diffs[s] for s in common if lo < s <= lo + window]
        if inside:
            windows.append({"steps": f"{lo + 1}-{lo + window}", "n": len(inside),
                            "mean_abs_diff": sum(inside) / len(inside)})
    return {"common_steps": len(common), "mean_abs_diff": sum(diffs.values()) / len(diffs),
            "windows": windows}


def script_env(data_path: Path, tokenizer: str, seed: int, steps: int, batch_tokens: int, seq_len: int,
               run_id: str, extra: dict[str, str]) -> dict[str, str]:
    """The challenge scripts' environment knobs for a fixed-step, wall-clock-free run."""
    env = {"DATA_PATH": str(data_path), "TOKENIZER_PATH": str(Path(tokenizer).resolve()), "SEED": str(seed),
           "ITERATIONS": str(steps), "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_BATCH_TOKENS": str(batch_tokens),
           "TRAIN_SEQ_LEN": str(seq_len), "TRAIN_LOG_EVERY": "1", "VAL_LOSS_EVERY": "0", "RUN_ID": run_id}
    env.update(extra)
    return env


def run_script(script: Path, env: dict[str, str], workdir: Path, log_path: Path, nproc: int = 1,
               standin: Path | None = None, launcher: list[str] | None = None) -> RunLog:
    """Run the published script (torchrun with nproc ranks by default) and parse what it printed."""
    launcher = launcher or [sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(Path(script).resolve())]
    full_env = {**dist.child_env(), **env}
    if standin is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(standin), full_env.get("PYTHONPATH")]))
    workdir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT).returncode
    out = parse_script_log(log_path.read_text(encoding="utf-8", errors="replace"))
    out.exit_code = code
    out.command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd)
    return out


def preset_command(preset: str, train: str, val: str, tokenizer: str, seed: int, steps: int,
                   batch_tokens: int, seq_len: int, run_dir: Path, sets: list[str]) -> list[str]:
    """`loopgolf train` for the preset in step-count mode on the same data, seed and batch."""
    fixed = [f"data.train={train}", f"data.val={val}", f"data.tokenizer={tokenizer}",
             f"train.seed={seed}", f"train.max_steps={steps}", "train.budget_s=0",
             f"train.batch_tokens={batch_tokens}", f"data.seq_len={seq_len}", "train.log_every=1",
             *sets]
    return [sys.executable, "-m", "loopgolf", "train", "--preset", preset,
            *sum((["--set", s] for s in fixed), []), "--run-dir", str(run_dir)]


def run_preset(cmd: list[str], run_dir: Path, log_path: Path) -> RunLog:
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    out = parse_run_dir(run_dir)
    out.exit_code = code
    out.command = shlex.join(cmd)
    return out


def window_means(curve: dict[int, float], steps, width: int) -> dict[int, float]:
    """For each step s in `steps`, the mean of `curve` over steps s-width+1..s (all must be logged):
    a per-step curve seen the way a script that logs running means (PR #29: 10 steps) sees its own."""
    out = {}
    for s in steps:
        inside = [curve[t] for t in range(s - width + 1, s + 1) if t in curve]
        if len(inside) == width:
            out[s] = sum(inside) / width
    return out


def as_logged(preset_run: RunLog, script_run: RunLog) -> dict[int, float]:
    """The preset's per-step losses as the script logs its own: running means where it logs them."""
    if script_run.loss_window > 1:
        return window_means(preset_run.train_loss, script_run.train_loss, script_run.loss_window)
    return preset_run.train_loss


def seed_verdict(script_runs: list[RunLog], preset_runs: list[RunLog]) -> dict | None:
    """Is the preset's curve within the two codes' seed-to-seed spread? Every (script seed, preset
    seed) pair's mean |diff| against the mean |diff| between seeds of one code. "within" when the
    mean cross-code distance is at most the mean within-code distance: two seeds of one code then
    differ as much as the two codes do (an energy-distance test; with two seeds a side it is
    coarse, and the report keeps every pair). None without a second seed of either code."""
    cross = [compare_curves(as_logged(p, s), s.train_loss, 1)["mean_abs_diff"]
             for s in script_runs for p in preset_runs]
    within = {}
    if len(script_runs) > 1:
        within["script"] = compare_curves(script_runs[1].train_loss, script_runs[0].train_loss, 1)["mean_abs_diff"]
    if len(preset_runs) > 1:
        ref = script_runs[0]
        pair = (as_logged(preset_runs[1], ref), as_logged(preset_runs[0], ref))
        within["preset"] = compare_curves(*pair, 1)["mean_abs_diff"]
    cross = [c for c in cross if c is not None]
    within = {k: v for k, v in within.items() if v is not None}
    if not cross or not within:
        return None
    cross_mean, within_mean = sum(cross) / len(cross), sum(within.values()) / len(within)
    return {"cross_pairs": cross, "cross_mean": cross_mean, "within": within, "within_mean": within_mean,
            "verdict": "within" if cross_mean <= within_mean else "outside"}


def fidelity_report(script_runs: list[RunLog], preset_run: RunLog, window: int, standin: bool,
                    more_presets: list[RunLog] = ()) -> dict:
    """Side-by-side curves: the preset against the first script seed, and the script's own spread.
    Where the script logs running means, the preset's per-step losses are averaged over the same
    steps before the comparison ("preset_compared": the curve that was compared). A second preset
    seed (more_presets) gives loopgolf's own seed-to-seed spread ("preset_seed_spread")."""
    ref = script_runs[0]
    compared = as_logged(preset_run, ref)
    report = {"window": window, "sdpa_standin": standin, "loss_window": ref.loss_window,
              "script": [asdict(r) for r in script_runs], "preset": asdict(preset_run),
              "preset_compared": {str(k): v for k, v in compared.items()},
              "preset_vs_script": compare_curves(compared, ref.train_loss, window)}
    if len(script_runs) > 1:
        report["script_seed_spread"] = compare_curves(script_runs[1].train_loss, ref.train_loss, window)
    if more_presets:
        report["preset_more_seeds"] = [asdict(r) for r in more_presets]
        report["preset_seed_spread"] = compare_curves(as_logged(more_presets[0], ref), compared, window)
    if verdict := seed_verdict(script_runs, [preset_run, *more_presets]):
        report["seed_verdict"] = verdict
    if preset_run.ms_per_step and ref.ms_per_step:
        report["ms_per_step_ratio"] = preset_run.ms_per_step / ref.ms_per_step
    if preset_run.steady_ms_per_step and ref.steady_ms_per_step:
        report["steady_ms_per_step_ratio"] = preset_run.steady_ms_per_step / ref.steady_ms_per_step
    return report


def _curve(run: dict) -> dict[int, float]:
    return {int(k): float(v) for k, v in run["train_loss"].items()}  # JSON keys are strings


def format_report(report: dict) -> str:
    ref, lg = report["script"][0], report["preset"]
    ref_c = _curve(ref)
    lg_c = _curve({"train_loss": report["preset_compared"]}) if "preset_compared" in report else _curve(lg)
    steps = sorted(set(ref_c) & set(lg_c))
    lines = [f"{'step':>6} {'script':>9} {'loopgolf':>9} {'|diff|':>8}"]
    shown = steps if len(steps) <= 25 else steps[:: max(1, len(steps) // 25)] + [steps[-1]]
    for s in sorted(set(shown)):
        a, b = ref_c[s], lg_c[s]
        lines.append(f"{s:>6} {a:>9.4f} {b:>9.4f} {abs(a - b):>8.4f}")
    cmp = report["preset_vs_script"]
    if cmp["mean_abs_diff"] is not None:
        lines.append(f"mean |diff| over {cmp['common_steps']} steps: {cmp['mean_abs_diff']:.4f}")
    for key, who in (("script_seed_spread", "script"), ("preset_seed_spread", "loopgolf")):
        if (spread := report.get(key)) and spread["mean_abs_diff"] is not None:
            lines.append(f"{who} seed-to-seed mean |diff|: {spread['mean_abs_diff']:.4f}")
    if v := report.get("seed_verdict"):
        within = ", ".join(f"{k} {x:.4f}" for k, x in v["within"].items())
        lines.append(f"seed verdict: {v['verdict']} (cross-code pairs mean {v['cross_mean']:.4f} over "
                     f"{len(v['cross_pairs'])}; within-code mean {v['within_mean']:.4f}: {within})")
    for name, r in (("script", ref), ("loopgolf", lg)):
        steady = f" (steady, first to last logged step: {r['steady_ms_per_step']})" if r.get("steady_ms_per_step") else ""
        lines.append(f"{name}: ms/step {r['ms_per_step']}{steady}, total bytes {r['total_bytes']}, "
                     f"round-trip val_bpb {r['roundtrip_bpb']}, exit {r['exit_code']}")
    if report.get("loss_window", 1) > 1:
        lines.append(f"note: the script logs {report['loss_window']}-step running means; loopgolf's "
                     "per-step losses were averaged over the same steps")
    if report["sdpa_standin"]:
        lines.append("note: the script's flash_attn_interface was an SDPA stand-in")
    if prof := report.get("script_profile"):
        env = " ".join(f"{k}={v}" for k, v in sorted(prof["env"].items()))
        lines.append(f"note: PR #{prof['pr']} profile; script env {env}; preset --set {prof['preset_sets']}")
    if report.get("val_tokens"):
        lines.append(f"note: both scored the first {report['val_tokens']:,} val tokens only")
    if (script := report.get("script_file")) and script.get("published") is False:
        lines.append(f"note: the script is an edited copy (sha256 {script['sha256'][:16]}…), not the PR's "
                     "published file (--modified-script)")
    return "\n".join(lines)


def plot_report(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(report["script"]):
        c = _curve(r)
        ax.plot(sorted(c), [c[s] for s in sorted(c)], label=f"published script (seed run {i + 1})", lw=1)
    c = _curve(report["preset"])
    ax.plot(sorted(c), [c[s] for s in sorted(c)], label="loopgolf preset", lw=1.5)
    for i, r in enumerate(report.get("preset_more_seeds", [])):
        c = _curve(r)
        ax.plot(sorted(c), [c[s] for s in sorted(c)], label=f"loopgolf preset (seed run {i + 2})", lw=1)
    if (w := report.get("loss_window", 1)) > 1:
        c = _curve({"train_loss": report["preset_compared"]})
        ax.plot(sorted(c), [c[s] for s in sorted(c)], "k--", marker=".", lw=1,
                label=f"loopgolf preset, {w}-step means (compared)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
