"""Step statistics read one step late, so the host never waits for the step it has just launched.

Reading a CUDA tensor on the host (`.tolist()`, `.item()`) waits for every kernel queued before it.
Reading step N's loss right after launching step N therefore drains the queue each step, and the GPU
sits idle while the host runs the schedule, the guards, the log and the launch of step N+1. Here
step N's statistics (loss, stop vote, clock) are summed across ranks and copied to pinned host
memory behind step N's own kernels, and a CUDA event marks the copy. The loop launches step N+1
first and then waits on step N's event only: the GPU keeps step N+1's kernels while the host reads.

The price is one step of lag in every decision: the loop stops one step after the vote that asked
for it, so a rank votes "stop" when its clock plus two mean steps reaches the budget (the step in
flight and the one launched before the vote is read). On CPU the copies are synchronous and the
event is omitted; the same code path runs.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from loopgolf import dist


@dataclass
class StepRecord:
    """Host-side facts about a launched step, kept until its device statistics arrive."""
    step: int  # optimizer steps done once this step completes
    spec: str  # plan stage (and row length) label for per-stage ms/step
    frac: float  # run progress of the step's trigger row
    lr_mult: float
    loss: float = float("nan")  # summed over ranks, filled by LaggedStats.take
    stop: bool = False  # some rank voted to stop
    clock: float = 0.0  # mean training clock over ranks when the stats were queued


class LaggedStats:
    """A queue of per-step statistics with at most `depth` steps in flight on the device."""

    def __init__(self, device: torch.device, depth: int = 2):
        self.cuda = device.type == "cuda"
        self.world = dist.info().world_size
        self.free = deque(
            (torch.zeros(3, dtype=torch.float64, device=device),
             torch.zeros(3, dtype=torch.float64, pin_memory=self.cuda)) for _ in range(depth))
        self.queue: deque[tuple[StepRecord, torch.Tensor, torch.Tensor, object]] = deque()

    def put(self, rec: StepRecord, loss: torch.Tensor, stop_vote: bool, clock: float) -> None:
        """Queue step `rec`'s statistics behind its kernels (no host wait)."""
        if not self.free:
            raise RuntimeError("LaggedStats.put: take() the oldest step before queueing another")
        dev, host = self.free.popleft()
        dev[0] = loss  # device-to-device copy; the scalars below are fill kernels, not host copies
        dev[1] = 1.0 if stop_vote else 0.0
        dev[2] = clock
        dist.all_reduce_sum(dev)
        host.copy_(dev, non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.queue.append((rec, dev, host, event))

    def take(self) -> StepRecord | None:
        """The oldest queued step with its statistics filled in, waiting for that step only."""
        if not self.queue:
            return None
        rec, dev, host, event = self.queue.popleft()
        if event is not None:
            event.synchronize()
        loss, votes, clock_sum = host.tolist()
        rec.loss, rec.stop, rec.clock = loss, votes > 0, clock_sum / self.world
        self.free.append((dev, host))
        return rec

    def __len__(self) -> int:
        return len(self.queue)
