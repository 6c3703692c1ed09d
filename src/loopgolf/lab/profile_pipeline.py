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
