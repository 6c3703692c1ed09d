"""The proxy benchmark (`proxy-300` of DEVELOPERS.md): shards from the bench pack, then presets side
by side, one training process per GPU, each writing a result JSON with its exact command.

    loopgolf bench prepare --bench-dir ../shared/data/bench --tokenizer fineweb_1024_bpe.model \
        --out /root/stage/shards --files train-00 train-01 val
    loopgolf bench run --shards /root/stage/shards --tokenizer ... --presets baseline universal \
        --budget-s 300 --out bench/results/proxy300

Comparisons are only meaningful inside one call on one machine (ratios, not absolute times).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from loopgolf import dist
from loopgolf.data.corpus import iter_documents
from loopgolf.data.prepare import tokenize_documents
from loopgolf.pipeline import write_json

# dense bf16 peak by datasheet (H100 SXM and H200 share the arithmetic units); MFU = model FLOP/s / peak
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def mfu(result: dict) -> float | None:
    gpus = result.get("env", {}).get("gpus") or []
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if gpus and k in gpus[0]), None)
    tf = result.get("model_tflops_per_s")
    return round(tf / (peak * result.get("world_size", 1)), 4) if peak and tf else None


def prepare_bench_shards(bench_dir: Path, tokenizer: Path, out: Path, files: list[str],
                         workers: int = 0) -> dict:
    """Tokenize bench files: `val` becomes the val split, every other file a train prefix."""
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in files:
        src = bench_dir / f"{name}.jsonl.zst"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: bench file missing; expected {bench_dir}/{name}.jsonl.zst")
        t0 = time.perf_counter()
        split = "val" if name == "val" else "train"
        prefix = "bench" if name == "val" else f"bench{name.replace('train-', '')}"
        paths = tokenize_documents(iter_documents(src), tokenizer, out, split, workers=workers,
                                   prefix=prefix, progress=False)
        made[name] = {"shards": [str(p) for p in paths], "seconds": round(time.perf_counter() - t0, 1)}
        print(f"bench prepare {name}: {len(paths)} shard(s) in {made[name]['seconds']} s", flush=True)
    return made


def run_side_by_side(presets: list[str], shards: Path, tokenizer: Path, budget_s: float, out: Path,
                     extra_sets: list[str], gpus: list[int] | None = None,
                     per_preset: dict[str, list[str]] | None = None) -> list[dict]:
    """One `loopgolf train` per preset, each pinned to its own GPU, all started together.
    `extra_sets` apply to every preset, then `per_preset[preset]` to that one."""
    per_preset = per_preset or {}
    out.mkdir(parents=True, exist_ok=True)
    gpus = gpus if gpus is not None else list(range(len(presets)))
    if len(gpus) < len(presets):
        raise ValueError(f"{len(presets)} presets need {len(presets)} GPUs; got {gpus}")
    procs = []
    for preset, gpu in zip(presets, gpus):
        name = preset.replace("/", "_")
        cmd = [sys.executable, "-m", "loopgolf", "train", "--preset", preset,
               "--set", f"data.train={shards}/*_train_*.bin", "--set", f"data.val={shards}/*_val_*.bin",
               "--set", f"data.tokenizer={tokenizer}", "--set", f"train.budget_s={budget_s}",
               *sum((["--set", s] for s in [*extra_sets, *per_preset.get(preset, [])]), []),
               "--run-dir", str(out / f"run_{name}")]
        env = dist.child_env(gpu)
        log = open(out / f"{name}.log", "w")
        procs.append((preset, gpu, cmd, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    results = []
    for preset, gpu, cmd, proc, log in procs:
        code = proc.wait()
        log.close()
        run_dir = out / f"run_{preset.replace('/', '_')}"
        res = {"preset": preset, "gpu_index": gpu, "exit_code": code,
               "command": f"CUDA_VISIBLE_DEVICES={gpu} " + " ".join(shlex.quote(c) for c in cmd)}
        if code == 0:
            res.update(json.loads((run_dir / "result.json").read_text()))
            res["env"] = json.loads((run_dir / "env.json").read_text())
            res["mfu"] = mfu(res)
        results.append(res)
        write_json(out / f"{preset.replace('/', '_')}.json", res)
    print(format_table(results), flush=True)
    return results


def format_table(results: list[dict]) -> str:
    cols = ("preset", "steps", "ms_per_step", "tokens_per_s", "mfu", "peak_mem_gib", "val_bpb_prequant",
            "val_bpb", "total_bytes", "stage_ms_per_step")
    lines = [" | ".join(cols)]
    for r in results:
        lines.append(" | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) and c.startswith("val")
                                else str(r.get(c, "-")) for c in cols))
    return "\n".join(lines)
