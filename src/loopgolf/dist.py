"""The only user of torch.distributed and of torchrun's environment variables.

`init()` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `torchrun`, single- or multi-node) and starts
NCCL on CUDA or gloo on CPU; without them everything is a no-op on one process. The rest of
loopgolf calls the helpers below and never touches torch.distributed itself.

Teardown: `cleanup()` (a barrier, then destroy_process_group) runs at the end of every command and,
registered with atexit, on any other exit. The process group must really be freed there: its gloo
worker threads, if still alive at interpreter shutdown, drop finished work whose tensors need the
GIL and abort the process ("terminate called without an active exception", SIGABRT). See init().
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_INFO = DistInfo()


def info() -> DistInfo:
    return _INFO


def init(device_kind: str) -> DistInfo:
    """Start the process group if launched by torchrun; returns this process's rank info."""
    global _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _INFO = DistInfo()
        return _INFO
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        # torch.distributed.nn.functional binds `group.WORLD` as default arguments when first
        # imported, and torch imports it lazily (optimizer construction -> torch._dynamo). Imported
        # after init, those defaults keep the default group alive after destroy_process_group, with
        # its worker threads; imported now they bind None.
        import torch.distributed.nn  # noqa: F401
        backend = "nccl" if device_kind == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", local)} if device_kind == "cuda" else {}
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
        atexit.register(cleanup, barrier=False)  # an exit without cleanup() (an error, sys.exit)
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local)
    return _INFO


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank_hint() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def child_env(gpu: str | int | None = None) -> dict[str, str]:
    """Environment for a child run, optionally pinned to one GPU (CUDA_VISIBLE_DEVICES)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if gpu is not None and gpu != "":
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def cleanup(barrier: bool = True) -> None:
    """Leave the process group: wait for every rank (barrier=True, the normal end of a command)
    so no rank tears down its connections while a peer still talks to it, then destroy it."""
    global _INFO
    if tdist.is_initialized():
        if barrier and _INFO.enabled:
            tdist.barrier()
        tdist.destroy_process_group()
    _INFO = DistInfo()


def barrier() -> None:
    if _INFO.enabled:
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (identity on one process); returns t."""
    if _INFO.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if _INFO.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t


def all_reduce_grads(params: list[torch.nn.Parameter], bucket_bytes: int = 64 << 20) -> None:
    """Sum gradients across ranks in flat buckets (the loss is already divided by global tokens)."""
    if not _INFO.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:
        if g is not None and (not bucket or (g.dtype == bucket[0].dtype and size < bucket_bytes)):
            bucket.append(g)
            size += g.numel() * g.element_size()
            continue
        if bucket:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()
        bucket, size = ([g], g.numel() * g.element_size()) if g is not None else ([], 0)


def broadcast_object(obj, src: int = 0):
    if not _INFO.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
