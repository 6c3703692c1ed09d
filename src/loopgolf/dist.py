"""The only user of torch.distributed and of torchrun's environment variables.

`init()` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `torchrun`, single- or multi-node) and starts
NCCL on CUDA or gloo on CPU; without them everything is a no-op on one process. The rest of
loopgolf calls the helpers below and never touches torch.distributed itself.

Gradient sync: `wrap_ddp` (torch DistributedDataParallel: bucketed all-reduces that start while
backward still runs, `grad_sync(model, False)` = DDP's no_sync for all but a step's last
micro-batch) or the older `all_reduce_grads` (one bucketed all-reduce after backward). Both SUM
gradients: the trainer's loss is already divided by the global token count. `all_gather_flat`
gives every rank every rank's share of a sharded computation (Muon's Newton-Schulz, train/optim.py).

Teardown: `cleanup()` (a barrier, then destroy_process_group) runs at the end of every command and,
registered with atexit, on any other exit. The process group must really be freed there: its gloo
worker threads, if still alive at interpreter shutdown, drop finished work whose tensors need the
GIL and abort the process ("terminate called without an active exception", SIGABRT). See init().
A DDP wrapper's C++ Reducer holds the group too (and the trainer holding the wrapper may live on
until interpreter shutdown), so cleanup() first drops the Reducer of every wrapper made here.
"""
from __future__ import annotations

import atexit
import datetime
import inspect
import os
import weakref
from contextlib import nullcontext
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
_WRAPPERS: weakref.WeakSet = weakref.WeakSet()  # every DDP made by wrap_ddp, released by cleanup()


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
            tdist.barrier()  # no rank's last bucket or gather is still in flight below
        for ddp in list(_WRAPPERS):  # the Reducer (and its comm hook) hold the group
            ddp.reducer = ddp.logger = ddp.process_group = None
            ddp._comm_hooks = []
        _WRAPPERS.clear()
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
    """Sum gradients across ranks in flat buckets after backward (train.grad_sync=allreduce; the
    loss is already divided by global tokens). A parameter without gradient on every rank (unused
    in this plan stage) keeps grad None, as on one process; one with a gradient on some rank gets
    zeros on the others (a rank may own no sequences when world > sequences per step)."""
    if not _INFO.enabled:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                       device=params[0].device if params else "cpu")
    all_reduce_max(has)
    for p, used in zip(params, has.tolist()):
        if used and p.grad is None:
            p.grad = torch.zeros_like(p)
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


def _sum_hook(state, bucket):
    """DDP comm hook: SUM a bucket (DDP's default averages, but the loss is already / global tokens)."""
    work = tdist.all_reduce(bucket.buffer(), op=tdist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused: bool,
             bucket_mb: int = 25) -> torch.nn.Module:
    """`model` under DistributedDataParallel (identity on one process). The model may already be
    torch.compile'd: DDP(compile(m)) is the order torch recommends ("Where to apply torch.compile?":
    compile the inner module passed to the wrapper), and compiled code that runs inside DDP's
    forward is still split at DDP's bucket boundaries by Dynamo's DDPOptimizer (Note
    [DDPOptimizer], torch/_dynamo/backends/distributed.py), so all-reduces overlap backward.

    Choices (train/loop.py says why for this model family):
    - find_unused_parameters=`find_unused`: needed when a plan stage leaves a parameter without
      gradient (DDP would wait for it forever), at the price of one autograd-graph walk per step.
      With it, a parameter unused on every rank keeps grad None, exactly as on one process.
    - static_graph=False: plan stages change the graph (and the used set) mid-run.
    - gradient_as_bucket_view=True: grads live in the all-reduce buckets (no copy back).
    - no buffer sync each forward: the only buffers (RoPE frequencies) are computed identically
      on every rank, and are broadcast from rank 0 once at construction anyway.
    - a comm hook that sums instead of averaging."""
    if not _INFO.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    kw = {}
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kw["forward_sync_buffers"] = False  # torch >= 2.13 spelling
    else:
        kw["broadcast_buffers"] = False
    if device.type == "cuda":
        kw["device_ids"] = [device.index if device.index is not None else _INFO.local_rank]
    ddp = DDP(model, find_unused_parameters=find_unused, static_graph=False,
              gradient_as_bucket_view=True, bucket_cap_mb=bucket_mb, **kw)
    ddp.register_comm_hook(None, _sum_hook)
    _WRAPPERS.add(ddp)
    return ddp


def grad_sync(model, sync: bool):
    """Context for one micro-batch's forward AND backward: DDP's no_sync() unless `sync` (the
    step's last micro-batch); a no-op for anything that is not a DDP wrapper."""
    return model.no_sync() if (not sync and model in _WRAPPERS) else nullcontext()


def all_gather_flat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D `t` (all the same length), stacked: shape (world_size, len(t))."""
    if not _INFO.enabled:
        return t.unsqueeze(0)
    out = torch.empty(_INFO.world_size * t.numel(), dtype=t.dtype, device=t.device)
    gather = getattr(tdist, "all_gather_single", None) or tdist.all_gather_into_tensor  # torch < 2.13
    gather(out, t.contiguous())
    return out.view(_INFO.world_size, t.numel())


def broadcast_object(obj, src: int = 0):
    if not _INFO.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
