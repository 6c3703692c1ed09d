"""`loopgolf profile`'s pipelined timing: steps as `loopgolf train` runs them, and what the host costs.

profile.py times each step between two device syncs, so the GPU idles while the host launches the
first kernels of every step. Training never syncs inside the loop (train/step_stats.py), so its
ms/step can differ from the synced figure either way. Here, per plan stage:

- `pipelined_ms_per_step`: `steps` steps launched back to back, one sync before and one after, as
  the training loop runs them;
- `host_launch_ms`: how long the host takes to launch one step from an idle GPU (median of three).
  When it nears the GPU's busy time per step, the host bounds the step and the GPU idles;
- the caching allocator's device allocations, frees and retries per pipelined step
  (`torch.cuda.memory_stats`). In a steady run these are 0: a cudaFree waits for the whole device,
  and a retry frees every cached block first.
"""
from __future__ import annotations

import statistics
import time

import torch

from loopgolf.train.warmup import synced_clock

ALLOCATOR_COUNTERS = ("num_device_alloc", "num_device_free", "num_alloc_retries")


def allocator_counts(device: torch.device) -> dict[str, int]:
    """The caching allocator's cumulative counters (empty on CPU or where torch lacks them)."""
    if device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {k: int(stats[k]) for k in ALLOCATOR_COUNTERS if k in stats}


def host_launch_ms(trainer, reps: int = 3) -> float:
    """Median host time to launch one training step with nothing queued on the device."""
    times = []
    for _ in range(reps):
        synced_clock(trainer.device)
        t0 = time.perf_counter()
        trainer._train_step()
        times.append(1000 * (time.perf_counter() - t0))
    synced_clock(trainer.device)
    return round(statistics.median(times), 2)


def pipelined_timing(trainer, steps: int) -> dict:
    """Back-to-back steps (one sync at each end), host launch time and allocator traffic per step."""
    launch = host_launch_ms(trainer)
    before = allocator_counts(trainer.device)
    t0 = synced_clock(trainer.device)
    for _ in range(steps):
        trainer._train_step()
    wall_ms = 1000 * (synced_clock(trainer.device) - t0) / steps
    after = allocator_counts(trainer.device)
    per_step = {k: round((after[k] - before[k]) / steps, 2) for k in after}
    return {"pipelined_ms_per_step": round(wall_ms, 2), "host_launch_ms": launch,
            "allocator_per_step": per_step}


def markdown_line(entry: dict) -> str:
    """One bullet for profile.md."""
    p = entry.get("pipeline")
    if not p:
        return ""
    alloc = ", ".join(f"{k} {v}" for k, v in p["allocator_per_step"].items()) or "not counted on this device"
    return (f"- pipelined (as training runs): {p['pipelined_ms_per_step']} ms/step; host launch of one step "
            f"{p['host_launch_ms']} ms; allocator per step: {alloc}")


def device_intervals(prof, skip: set[str]) -> list[tuple[str, float, float]]:
    """(kernel name, start µs, end µs) of every GPU kernel torch.profiler saw, in start order."""
    out = []
    for e in prof.events():
        if not str(getattr(e, "device_type", "")).endswith("CUDA") or e.key in skip or "#" in e.key:
            continue
        if e.key.startswith("ProfilerStep") or getattr(e, "is_user_annotation", False):
            continue
        out.append((e.key, float(e.time_range.start), float(e.time_range.end)))
    return sorted(out, key=lambda r: r[1])


def idle_gaps(intervals: list[tuple[str, float, float]], steps: int, top: int = 8,
              min_gap_us: float = 20.0) -> dict:
    """Where the GPU waits between kernels: the idle time inside the profiled span (ms/step), and the
    largest idle stretches grouped by the kernel that ends before them and the one that starts after.
    Overlapping kernels (several streams) count once: idle is time no kernel covers."""
    if not intervals:
        return {"span_ms_per_step": 0.0, "idle_ms_per_step": 0.0, "gaps_over_min": 0, "top": []}
    idle_us, covered_to, prev = 0.0, intervals[0][2], intervals[0][0]
    groups: dict[tuple[str, str], list[float]] = {}
    count = 0
    for name, start, end in intervals[1:]:
        gap = start - covered_to
        if gap > 0:
            idle_us += gap
            if gap >= min_gap_us:
                count += 1
                groups.setdefault((prev, name), []).append(gap)
        if end >= covered_to:
            covered_to, prev = end, name
    span_us = covered_to - intervals[0][1]
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"span_ms_per_step": round(span_us / 1000 / steps, 3),
            "idle_ms_per_step": round(idle_us / 1000 / steps, 3),
            "gaps_over_min": count, "min_gap_us": min_gap_us,
            "top": [{"after": a[:90], "before": b[:90], "gaps_per_step": round(len(g) / steps, 2),
                     "ms_per_step": round(sum(g) / 1000 / steps, 3), "max_us": round(max(g), 1)}
                    for (a, b), g in rows]}


def gap_markdown(gaps: dict | None) -> list[str]:
    """profile.md's table of the largest idle stretches between kernels."""
    if not gaps or not gaps.get("top"):
        return []
    lines = [f"- GPU idle between kernels: {gaps['idle_ms_per_step']} ms of a {gaps['span_ms_per_step']} ms "
             f"profiled span per step; {gaps['gaps_over_min']} gaps of ≥ {gaps['min_gap_us']:g} µs", "",
             "| idle after kernel | before kernel | gaps/step | ms/step | longest µs |", "|---|---|---|---|---|"]
    lines += [f"| `{r['after']}` | `{r['before']}` | {r['gaps_per_step']} | {r['ms_per_step']} | {r['max_us']} |"
              for r in gaps["top"]]
    return lines + [""]
