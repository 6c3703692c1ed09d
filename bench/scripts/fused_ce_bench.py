"""Plain vs fused softcapped CE (model/fused_ce.py): peak memory and time of forward + backward.

    python bench/scripts/fused_ce_bench.py cpu   [N V D]   # peak bytes from the torch profiler's
                                                           # allocation events (CPU), fp32
    python bench/scripts/fused_ce_bench.py cuda [OUT.json [head]]  # bf16 autocast, eager and
                                            # torch.compile: the head alone, then a baseline GPT step

Peak = the highest running sum of the allocations made inside forward + backward (outputs and
gradients included); the inputs (h, W, targets, upstream gradient) exist before and are not counted.
"""
from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

from loopgolf.model.fused_ce import chunk_rows, fused_softcapped_nll


def plain(h, w, t):
    z = F.linear(h, w.to(h.dtype)).float()
    return F.cross_entropy(30.0 * torch.tanh(z / 30.0), t, reduction="none")


def fused(rows):
    return lambda h, w, t: fused_softcapped_nll(h, w, t, 30.0, rows=rows)


def step(fn, h, w, t, g):
    nll = fn(h, w, t)
    gh, gw = torch.autograd.grad((nll * g).sum(), (h, w))
    return nll, gh, gw


def cpu_peak(fn, h, w, t, g) -> int:
    """Highest running sum of the allocations (CREATE - DESTROY, every CPU tensor) in the torch
    profiler's allocation timeline (the one export_memory_timeline reads)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        out = step(fn, h, w, t, g)
        del out
    run = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        run += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, run)
    return peak


def rss_peak(fn, h, w, t, g) -> int:
    """Cross-check from the kernel: VmHWM after the step minus VmRSS before, the high-water mark
    reset first (/proc/self/clear_refs 5; Linux only)."""
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    out = step(fn, h, w, t, g)
    peak = status("VmHWM")
    del out
    return peak - before


def cpu_main(n: int, v: int, d: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.05).requires_grad_()
    t, g = torch.randint(0, v, (n,)), torch.full((n,), 1.0 / n)
    ref = step(plain, h, w, t, g)
    rows_default = chunk_rows(v)
    print(f"N={n} V={v} d={d} fp32 CPU; one N x V fp32 tensor = {n * v * 4 / 2**20:.1f} MiB")
    for name, fn in [("plain", plain), (f"fused rows={rows_default} (default)", fused(rows_default)),
                     ("fused rows=2048", fused(2048))]:
        peak, rss = cpu_peak(fn, h, w, t, g), rss_peak(fn, h, w, t, g)
        t0 = time.perf_counter()
        out = step(fn, h, w, t, g)
        dt = time.perf_counter() - t0
        err = max((a - b).abs().max().item() for a, b in zip(out, ref))
        print(f"  {name:32s} peak {peak / 2**20:7.1f} MiB (profiler)  {rss / 2**20:7.1f} MiB (RSS)"
              f"  {dt * 1e3:7.1f} ms  max|diff| {err:.2e}")


def cuda_time(fn, *args, reps=10):
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn(*args)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def cuda_peak(fn, *args):
    fn(*args)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*args)
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated() - base


def cuda_head(results):
    n, d = 65536, 512  # one micro-batch of 64 x 1024 tokens
    for v in (1024, 8192):
        torch.manual_seed(0)
        h = torch.randn(n, d, device="cuda").bfloat16().requires_grad_()
        w = (torch.randn(v, d, device="cuda") * 0.05).requires_grad_()
        t, g = torch.randint(0, v, (n,), device="cuda"), torch.full((n,), 1.0 / n, device="cuda")
        ref = None
        for name, fn in [("plain", plain), ("fused", fused(chunk_rows(v)))]:
            for mode in ("eager", "compile"):
                torch._dynamo.reset()
                f = torch.compile(fn, dynamic=False) if mode == "compile" else fn

                def run(h, w, t, g, f=f):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return step(f, h, w, t, g)
                out = run(h, w, t, g)
                ref = out if ref is None else ref
                err = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(out, ref)]
                r = dict(case="head", V=v, N=n, d=d, head=name, mode=mode, peak_MiB=cuda_peak(run, h, w, t, g) / 2**20,
                         ms=cuda_time(run, h, w, t, g), rel_err_vs_plain_eager=err)
                print(json.dumps(r), flush=True)
                results.append(r)


def cuda_model(results):
    from loopgolf.model.gpt import GPT
    from loopgolf.presets import get_preset
    for v in (1024, 8192):
        for fused_ce in (False, True):
            torch._dynamo.reset()
            cfg = get_preset("baseline").model
            cfg.vocab_size, cfg.fused_ce = v, fused_ce
            torch.manual_seed(0)
            model = GPT(cfg).cuda()
            cmodel = torch.compile(model, dynamic=False)
            idx = torch.randint(0, v, (64, 1024), device="cuda")

            def run(idx=idx, cmodel=cmodel, model=model):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = cmodel(idx, idx).mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
                return loss.detach()
            loss = run().item()
            r = dict(case="baseline GPT step, compiled", V=v, fused_ce=fused_ce, batch="64x1024",
                     peak_MiB=cuda_peak(run) / 2**20, ms=cuda_time(run, reps=5), loss=loss)
            print(json.dumps(r), flush=True)
            results.append(r)
            del model, cmodel


if __name__ == "__main__":
    if sys.argv[1] == "cpu":
        cpu_main(*(int(x) for x in sys.argv[2:5])) if len(sys.argv) > 2 else cpu_main(16384, 1024, 512)
    else:
        print(torch.__version__, torch.cuda.get_device_name(), flush=True)
        res: list = []
        cuda_head(res)
        if "head" not in sys.argv[3:]:  # `cuda OUT.json head`: the head alone
            cuda_model(res)
        if len(sys.argv) > 2:
            with open(sys.argv[2], "w") as f:
                json.dump(res, f, indent=1)
