"""Check a compiled model's gradients against eager on one micro-batch, before the clock starts.

torch.compile can be silently wrong. On torch 2.11 + H200, the compiled XSA at head dim 110 gave
every attention weight of seed-shared-3x4 a gradient ~1e3x off. The run then diverged, and
finding out cost two sessions (bench/results/2026-12-02_seed-shared-3x4_compile_xsa_h200).
Inductor's mix-order reduction drops gradient writes for slices of a shared parameter
(pytorch#193061). Both are caught by comparing, once per compiled graph, the compiled gradient of
one micro-batch with the eager gradient of the same micro-batch.

The eager side runs the micro-batch in chunks of a few sequences, so it needs no more memory than
the compiled step; the summed loss gives the same gradient. Differences at bf16 rounding are
expected: the relative error ‖g_c − g_e‖ / ‖g_e‖ of a parameter is ~1e-3..1e-1 in bf16. A gradient
far below its share of the total norm (FLOOR) is measured against that share, and parameters whose
two gradients are both zero count as agreeing; at initialization that is every
weight behind a zero-initialized projection. So the trainer checks after its warm-up steps, when
those weights have moved. A parameter off by more than `tol` (default 1.0, an error as large as
the gradient itself) fails the check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

TOL = 1.0  # relative gradient error that fails the check (bf16 noise is 1e-3..1e-1; the XSA bug ~1e3)
EAGER_CHUNK_SEQS = 8
FLOOR = 1e-2  # errors are relative to max(|g_eager|, FLOOR x the parameter's share of the total norm)


@dataclass
class GradCheck:
    worst: list[tuple[str, float]] = field(default_factory=list)  # (parameter, relative error), worst first
    median: float = 0.0
    tol: float = TOL

    @property
    def ok(self) -> bool:
        return not self.worst or self.worst[0][1] <= self.tol

    def summary(self) -> dict:
        return {"ok": self.ok, "median_rel_err": round(self.median, 5), "tol": self.tol,
                "worst": [[n, round(e, 5)] for n, e in self.worst[:5]]}


def _grads(fn, params: list, names: list[str], x: torch.Tensor, y: torch.Tensor, stage: int, amp,
           chunk: int) -> dict[str, torch.Tensor]:
    """Gradients of the summed loss by torch.autograd.grad: no .grad is touched and no
    AccumulateGrad hook runs, so DDP's reducer never sees these passes."""
    total: list[torch.Tensor | None] = [None] * len(params)
    for i in range(0, x.size(0), chunk):
        with amp:
            loss = fn(x[i:i + chunk], y[i:i + chunk], stage=stage).float().sum()
        for j, g in enumerate(torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                total[j] = g.float() if total[j] is None else total[j] + g.float()
    return {n: g for n, g in zip(names, total) if g is not None}


def check_gradients(raw: torch.nn.Module, compiled, x: torch.Tensor, y: torch.Tensor, stage: int,
                    amp, tol: float = TOL, eager_chunk: int = EAGER_CHUNK_SEQS) -> GradCheck:
    """Relative gradient error per parameter of `compiled(x, y, stage)` against `raw`'s eager
    forward on the same (x, y), leaving every .grad as it was."""
    named = [(n, p) for n, p in raw.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    got = _grads(compiled, params, names, x, y, stage, amp, x.size(0))  # the compiled graph's own batch shape
    want = _grads(raw, params, names, x, y, stage, amp, eager_chunk)
    pairs = {}
    for name in sorted(set(got) | set(want)):
        g, w = got.get(name), want.get(name)
        pairs[name] = (torch.zeros_like(w) if g is None else g, torch.zeros_like(g) if w is None else w)
    numel = sum(w.numel() for _, w in pairs.values())
    total = sum(w.square().sum().item() for _, w in pairs.values()) ** 0.5
    errs = []
    for name, (g, w) in pairs.items():
        # a gradient far below its share of the total norm is compared against that share, so
        # rounding noise on a near-zero gradient never reads as a large relative error
        floor = FLOOR * total * (w.numel() / numel) ** 0.5
        scale = max(w.norm().item(), g.norm().item())
        errs.append((name, 0.0 if scale < 1e-12 else (g - w).norm().item() / max(w.norm().item(), floor, 1e-12)))
    errs.sort(key=lambda t: -t[1])
    median = sorted(e for _, e in errs)[len(errs) // 2] if errs else 0.0
    return GradCheck(worst=errs, median=median, tol=tol)


class CompileMismatch(RuntimeError):
    """torch.compile's gradients disagree with eager beyond bf16 rounding."""


def mismatch_error(check: GradCheck, stage: int) -> CompileMismatch:
    worst = ", ".join(f"{n} {e:.3g}" for n, e in check.worst[:3])
    return CompileMismatch(
        f"torch.compile's gradients disagree with eager on plan stage {stage} (relative error {worst}; "
        f"bf16 rounding stays below {check.tol}): the compiled model would train wrongly. Rerun with "
        "--set train.compile=false (eager, slower), or --set train.compile_check=false to train "
        "compiled anyway; bench/scripts/compile_check.py narrows down the module")


def check_trainer_graph(trainer) -> GradCheck:
    """check_gradients for the trainer's current plan stage and row length on its next micro-batch
    (the warm-up restores the data position afterwards); each rank checks its own micro-batch."""
    batches = trainer.loader.next_step()
    if not batches:  # this rank holds no sequences of the step (world size > sequences)
        return GradCheck()
    x, y = batches[0]
    check = check_gradients(trainer.raw_model, trainer.model, x, y, trainer.stage, trainer.amp)
    if not check.ok:
        raise mismatch_error(check, trainer.stage)
    return check
