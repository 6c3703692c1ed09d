"""dist: a no-op on one process; under torchrun DDP sums gradients (no_sync accumulates, unused
parameters keep grad None, a compiled model keeps Dynamo's bucket splits), all_gather_flat stacks
every rank's share, and the process group is really freed by cleanup(), even with DDP alive."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from loopgolf import dist


def test_single_process_is_a_no_op():
    info = dist.init("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    t = torch.tensor([2.0, 3.0])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [2.0, 3.0]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()
    assert dist.all_gather_flat(t).shape == (1, 2)
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(model, torch.device("cpu"), find_unused=True) is model  # no wrapper at all
    with dist.grad_sync(model, sync=False):  # nothing to suspend
        model(t).sum().backward()
    grad = model.weight.grad.clone()
    dist.all_reduce_grads(list(model.parameters()))
    assert torch.equal(model.weight.grad, grad)
    dist.cleanup()
    assert dist.info().world_size == 1


_WORKER = textwrap.dedent("""
    import os, sys, time, torch
    from loopgolf import dist

    def threads():  # gloo's worker threads (torch.compile adds a tqdm monitor thread of its own)
        names = []
        for t in os.listdir("/proc/self/task"):
            try:
                names.append(open(f"/proc/self/task/{t}/comm").read())
            except OSError:  # the thread ended meanwhile
                pass
        return sum("gloo" in n for n in names)

    before = threads()
    info = dist.init("cpu")
    # building an optimizer imports torch._dynamo -> torch.distributed.nn.functional, whose default
    # arguments captured group.WORLD when imported after init, keeping the group and its threads
    torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    t = torch.full((3,), float(info.rank + 1))
    dist.all_reduce_sum(t)
    assert t.tolist() == [3.0] * 3, t
    g = dist.all_gather_flat(torch.full((2,), float(info.rank)))
    assert g.tolist() == [[0.0, 0.0], [1.0, 1.0]], g

    class Toy(torch.nn.Module):  # `a` used twice (a shared block), `b` only in stage 1
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x, stage=0):
            y = self.a(torch.tanh(self.a(x)))
            return (self.b(y) if stage else y).sum()

    torch.manual_seed(0)
    model, ref = Toy(), Toy()
    ref.load_state_dict(model.state_dict())
    ddp = dist.wrap_ddp(model, torch.device("cpu"), find_unused=True)
    x = torch.full((2, 4), float(info.rank + 1))
    for sync in (False, True):  # two micro-batches, the first under no_sync
        with dist.grad_sync(ddp, sync=sync):
            ddp(x, stage=0).backward()
    for r in range(2):  # one process: both ranks' micro-batches, summed
        for _ in range(2):
            ref(torch.full((2, 4), float(r + 1))).backward()
    assert torch.allclose(model.a.weight.grad, ref.a.weight.grad, rtol=1e-6), "DDP must sum, not average"
    assert model.b.weight.grad is None  # unused on every rank: no grad, as on one process

    # DDP(compile(m)): Dynamo's DDPOptimizer still splits the graph at 1 MB buckets (4 x 1 MB here)
    calls = []

    def backend(gm, example_inputs):
        calls.append(gm)
        return gm.forward
    deep = torch.nn.Sequential(*[torch.nn.Linear(512, 512, bias=False) for _ in range(4)])
    cddp = dist.wrap_ddp(torch.compile(deep, backend=backend), torch.device("cpu"), find_unused=False,
                         bucket_mb=1)
    cddp(torch.randn(2, 512)).sum().backward()
    assert len(calls) > 1, len(calls)
    during = threads()
    dist.cleanup()  # ddp and cddp are still alive: their Reducers must not keep the group's threads
    deadline = time.time() + 10  # the shut-down threads exit on their own schedule: give them 10 s
    while threads() and time.time() < deadline:
        time.sleep(0.05)
    with open(os.path.join(sys.argv[1], f"rank{info.rank}.txt"), "w") as f:  # ranks share one stdout
        f.write(f"threads {before} {during} {threads()} graphs {len(calls)}\\n")
""")


@pytest.mark.dist
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_cleanup_frees_the_process_group_and_its_threads(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [(tmp_path / f"rank{r}.txt").read_text().split()[1:4] for r in range(2)]
    for before, during, after in (map(int, r) for r in rows):
        assert before == after == 0 < during, (before, during, after)  # gloo threads joined


@pytest.mark.dist
def test_torchrun_train_exits_cleanly_every_time(tiny_args, tmp_path):
    """`torchrun -m loopgolf train` on 2 gloo ranks (DDP + sharded Muon), several times: it once
    aborted under CPU load in rank 1 ("terminate called without an active exception", SIGABRT)
    when gloo threads outlived the process group at interpreter shutdown (module docstring)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for i in range(4):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "loopgolf", "train", "--preset", "tiny", *tiny_args, "--set", "train.max_steps=2",
               "--run-dir", str(tmp_path / f"run{i}")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, (i, proc.stderr[-3000:])
        assert '"world_size": 2' in (tmp_path / f"run{i}" / "result.json").read_text()
