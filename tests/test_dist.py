"""dist: a no-op on one process; under torchrun the process group is really freed by cleanup()."""
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
    dist.cleanup()
    assert dist.info().world_size == 1


_WORKER = textwrap.dedent("""
    import os, sys, torch
    from loopgolf import dist

    def threads():
        return len(os.listdir("/proc/self/task"))

    before = threads()
    info = dist.init("cpu")
    # building an optimizer imports torch._dynamo -> torch.distributed.nn.functional, whose default
    # arguments captured group.WORLD when imported after init, keeping the group and its threads
    torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    t = torch.full((3,), float(info.rank + 1))
    dist.all_reduce_sum(t)
    assert t.tolist() == [3.0] * 3, t
    during = threads()
    dist.cleanup()
    with open(os.path.join(sys.argv[1], f"rank{info.rank}.txt"), "w") as f:  # ranks share one stdout
        f.write(f"threads {before} {during} {threads()}\\n")
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
    rows = [(tmp_path / f"rank{r}.txt").read_text().split()[1:] for r in range(2)]
    for before, during, after in (map(int, r) for r in rows):
        assert during > before and after == before, (before, during, after)  # gloo threads joined
