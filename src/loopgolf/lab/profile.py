"""`loopgolf profile`: where a training step's time goes, measured on the machine it runs on.

The preset's model, loader and Trainer are built as `loopgolf train` builds them (compiled on CUDA,
the same warm-up, every plan stage primed), then for each plan stage:

1. `--steps` steps are timed end to end: ms/step, tokens/s and MFU (model FLOPs from
   `GPT.flops_per_token`, against the datasheet bf16 peak and the matmul rate measured in this
   process);
2. one step's GPU time is split into data (host->device copy), forward+backward and optimizer
   (CUDA events between the phases, averaged over the timed steps);
3. `--profile-steps` steps run under torch.profiler and every GPU kernel (aten op on CPU) is put in a category
   (`KERNEL_CATEGORIES`, first match wins): the top kernels by self GPU time and the totals per
   category, and the GPU's busy share of the wall clock (the rest is launch gaps and host waits);
4. one step runs under `torch.cuda.set_sync_debug_mode("warn")`: every host sync it makes is listed;
5. `--steps` steps run back to back as training runs them, with the host's launch time and the
   allocator's traffic per step (lab/profile_pipeline.py).

Output: profile.json (everything) and profile.md (the tables to commit) under --out. Data are random
tokens unless `--shards` is given: a step's speed does not depend on the token values.
"""
from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from loopgolf.data.loader import BatchLoader, token_stream
from loopgolf.data.shards import write_shard
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.lab.profile_pipeline import device_intervals, gap_markdown, idle_gaps, markdown_line, pipelined_timing
from loopgolf.train.loop import Trainer
from loopgolf.train.warmup import synced_clock

DATASHEET_BF16_TFLOPS = 989.0  # H100 SXM / H200 dense bf16 (lab/bench.py uses the same peak)

# (category, regex on the kernel name); first match wins, so the specific names come first
KERNEL_CATEGORIES = (
    ("attention", r"flash|fmha|attention|sdpa|_attn|scaled_dot_product|cudnn"),  # cuDNN runs SDPA here
    ("optimizer", r"adam|multi_tensor|foreach|_fused_sgd|newton"),
    ("cross_entropy", r"cross_entropy|nll_loss|log_softmax|softmax_backward"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|wgmma|cublas|sm90|sm80|triton_tem|matmul|mm_|aten::(mm|addmm|bmm|linear)$"),
    ("fused_reduction", r"triton_(red|per)_"),
    ("fused_pointwise", r"triton_poi_"),
    ("copy_fill", r"memcpy|memset|copy|fill|cat_|index|gather|scatter"),
    ("elementwise_eager", r"elementwise|vectorized|reduce_kernel|unrolled"),
)


def categorize(name: str) -> str:
    low = name.lower()
    for cat, pattern in KERNEL_CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def random_shards(out: Path, vocab: int, tokens: int, seed: int = 0) -> str:
    """A train shard of uniform random tokens; returns its glob."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_shard(out / "random_train_000000.bin", rng.integers(0, vocab, size=tokens, dtype=np.int64))
    return str(out / "random_train_*.bin")


def measured_matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """bf16 n x n x n matrix products on random data: the rate this GPU reaches (KINDS.md's method)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return round(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, 1)


class _Events:
    """CUDA events at named points of a step (no-ops on CPU, where wall time is used)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append((name, e))
        else:
            self.marks.append((name, time.perf_counter()))

    def spans_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = a.elapsed_time(b) if self.cuda else 1000 * (b - a)
        return out


def _step_with_phases(trainer: Trainer) -> dict[str, float]:
    ev = _Events(trainer.device)
    ev.mark("start")
    batches = trainer.loader.next_step()
    ev.mark("data")
    trainer._forward_backward(batches)
    ev.mark("forward_backward")
    trainer._optimizer_step()
    ev.mark("optimizer")
    return ev.spans_ms()


def time_steps(trainer: Trainer, steps: int) -> dict:
    """ms/step end to end (host clock around synchronized steps) and the per-phase GPU split."""
    phases: dict[str, list[float]] = {}
    t0 = synced_clock(trainer.device)
    for _ in range(steps):
        for k, v in _step_with_phases(trainer).items():
            phases.setdefault(k, []).append(v)
    wall_ms = 1000 * (synced_clock(trainer.device) - t0) / steps
    return {"ms_per_step": round(wall_ms, 2),
            "phase_ms": {k: round(float(np.mean(v)), 2) for k, v in phases.items()}}


def _self_us(evt, cuda: bool) -> float:
    """Self GPU time of a kernel (CUDA), or self CPU time of an aten op (CPU runs)."""
    if not cuda:
        return float(evt.self_cpu_time_total) if evt.key.startswith("aten::") else 0.0
    if str(getattr(evt, "device_type", "")).endswith("CPU"):
        return 0.0
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def kernel_table(trainer: Trainer, steps: int, top: int = 25) -> dict:
    """torch.profiler over `steps` steps: top kernels, per-category totals, GPU busy share."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = synced_clock(trainer.device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            trainer._train_step()
        synced_clock(trainer.device)
    wall_us = 1e6 * (time.perf_counter() - t0)
    rows = []
    # record_function ranges (e.g. "Optimizer.step#Muon.step") also appear on the GPU timeline;
    # they span kernels counted on their own, so they are left out
    annotations = {e.key for e in prof.events() if getattr(e, "is_user_annotation", False)}
    for evt in prof.key_averages():
        us = _self_us(evt, cuda)
        if us <= 0 or evt.key in annotations or "#" in evt.key or evt.key.startswith("ProfilerStep"):
            continue
        rows.append({"kernel": evt.key, "category": categorize(evt.key), "calls": evt.count // steps,
                     "ms_per_step": us / 1000 / steps})
    rows.sort(key=lambda r: -r["ms_per_step"])
    busy_ms = sum(r["ms_per_step"] for r in rows)
    cats: dict[str, float] = {}
    for r in rows:
        cats[r["category"]] = cats.get(r["category"], 0.0) + r["ms_per_step"]
    wall_ms = wall_us / 1000 / steps
    gaps = idle_gaps(device_intervals(prof, annotations), steps) if cuda else None
    return {"gaps": gaps, "wall_ms_per_step": round(wall_ms, 2), "gpu_busy_ms_per_step": round(busy_ms, 2),
            "gpu_busy_frac": round(busy_ms / wall_ms, 4) if wall_ms else None,
            "kernels_per_step": sum(r["calls"] for r in rows),
            "categories": {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top": [{**r, "ms_per_step": round(r["ms_per_step"], 3)} for r in rows[:top]]}


def host_syncs(trainer: Trainer) -> list[str]:
    """The distinct host-sync warnings one training step raises (CUDA only)."""
    if trainer.device.type != "cuda":
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer._train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sorted({str(w.message).splitlines()[0][:200] for w in caught})


def profile_run(cfg, out: Path, steps: int = 10, profile_steps: int = 3, shards: str = "") -> dict:
    """Build the trainer for cfg, warm it up, then time and profile every plan stage."""
    from loopgolf.pipeline import resolve_device

    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    need = cfg.train.batch_tokens * (steps + profile_steps + 2) * 2 + 1
    pattern = shards or random_shards(out / "random_data", cfg.model.vocab_size, min(need, 64 << 20))
    paths = sorted(Path(p) for p in __import__("glob").glob(pattern))
    if not paths:
        raise FileNotFoundError(f"{pattern}: no shard matches; pass --shards 'DIR/*_train_*.bin'")
    model = GPT(cfg.model).to(device)
    loader = BatchLoader(token_stream(paths, cfg.data.sampling, cfg.train.seed), cfg.data.seq_len,
                         cfg.train.batch_tokens, cfg.train.micro_batch_seqs, 0, 1, device)
    trainer = Trainer(cfg, model, loader, device, Logger(None, enabled=False))
    warm_s = trainer.warmup()
    peak = measured_matmul_tflops(device)
    result = {"preset": cfg.name, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "params": model.num_params(), "batch_tokens": cfg.train.batch_tokens,
              "micro_batch_seqs": cfg.train.micro_batch_seqs, "seq_len": cfg.data.seq_len,
              "compile": cfg.train.compile and device.type == "cuda", "compile_mode": cfg.train.compile_mode,
              "compile_warmup_s": round(warm_s, 1), "compile_stats": trainer.compile_stats.get("warmup"),
              "measured_matmul_tflops": peak, "stages": []}
    for stage in range(len(trainer.table.stages) or 1):
        trainer.stage = stage
        spec = trainer.table.stages[stage].plan.spec if trainer.table.stages else "-"
        timing = time_steps(trainer, steps)
        tok_s = cfg.train.batch_tokens / (timing["ms_per_step"] / 1000)
        tflops = model.flops_per_token(cfg.data.seq_len, stage=stage) * tok_s / 1e12
        entry = {"stage": stage, "plan": spec, **timing, "tokens_per_s": round(tok_s),
                 "model_tflops_per_s": round(tflops, 1), "mfu_datasheet": round(tflops / DATASHEET_BF16_TFLOPS, 4),
                 "mfu_measured_peak": round(tflops / peak, 4) if peak else None,
                 "kernels": kernel_table(trainer, profile_steps), "host_syncs": host_syncs(trainer),
                 "pipeline": pipelined_timing(trainer, steps)}
        if device.type == "cuda":
            entry["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["stages"].append(entry)
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "profile.md").write_text(format_markdown(result))
    return result


def format_markdown(r: dict) -> str:
    lines = [f"# profile: {r['preset']} on {r['device']} (torch {r['torch']})", "",
             f"params {r['params']:,}; batch {r['batch_tokens']:,} tokens in micro-batches of "
             f"{r['micro_batch_seqs']} x {r['seq_len']}; compile {r['compile']} ({r['compile_mode']}), "
             f"warm-up {r['compile_warmup_s']} s; bf16 matmul measured here: {r['measured_matmul_tflops']} TFLOP/s", ""]
    for s in r["stages"]:
        k = s["kernels"]
        lines += [f"## stage {s['stage']}: plan {s['plan']}", "",
                  f"- {s['ms_per_step']} ms/step, {s['tokens_per_s']:,} tokens/s, {s['model_tflops_per_s']} model "
                  f"TFLOP/s = MFU {100 * s['mfu_datasheet']:.1f} % of 989 (datasheet)"
                  + (f", {100 * s['mfu_measured_peak']:.1f} % of the measured matmul rate" if s["mfu_measured_peak"] else ""),
                  "- GPU phases per step (ms): " + ", ".join(f"{a} {b}" for a, b in s["phase_ms"].items()),
                  f"- profiled: {k['wall_ms_per_step']} ms/step wall, GPU busy {k['gpu_busy_ms_per_step']} ms "
                  f"({100 * (k['gpu_busy_frac'] or 0):.1f} %), {k['kernels_per_step']} kernels/step",
                  f"- host syncs in one step: {len(s['host_syncs'])}" + "".join(f"\n  - `{m}`" for m in s["host_syncs"]),
                  markdown_line(s),
                  "", "| category | ms/step | share of busy |", "|---|---|---|"]
        busy = k["gpu_busy_ms_per_step"] or 1.0
        lines += [f"| {c} | {v} | {100 * v / busy:.1f} % |" for c, v in k["categories"].items()]
        lines += [""] + gap_markdown(k.get("gaps"))
        lines += ["| kernel | category | calls/step | ms/step |", "|---|---|---|---|"]
        lines += [f"| `{t['kernel'][:90]}` | {t['category']} | {t['calls']} | {t['ms_per_step']} |" for t in k["top"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def cmd_profile(args) -> int:
    from loopgolf.lab.compress_commands import _config_from

    cfg = _config_from(args)
    if args.name:
        cfg.name = args.name
    if not any(s.startswith("train.warmup_steps=") for s in (args.set or [])):
        cfg.train.warmup_steps = 3
    r = profile_run(cfg, Path(args.out), steps=args.steps, profile_steps=args.profile_steps, shards=args.shards)
    print((Path(args.out) / "profile.md").read_text(), flush=True)
    return 0 if r["stages"] else 1


def register(sub) -> None:
    p = sub.add_parser("profile", help="where a training step's time goes (kernels, phases, host syncs)")
    p.add_argument("--preset", default="baseline")
    p.add_argument("--config", help="a config.json instead of a preset")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--name")
    p.add_argument("--shards", default="", help="train shard glob (default: random tokens)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per plan stage")
    p.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler per stage")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_profile)
