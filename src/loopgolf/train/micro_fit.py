"""The first warm-up step with the micro-batch halved until it fits the GPU's memory.

A larger micro-batch is faster (fewer, fatter kernels; measured on one H200 for `baseline`: 512
sequences 235.6 ms/step against 240.7 at 256, bench/results/2026-12-02b_baseline_speed_sweep_h200)
but needs more memory (82 GiB against 41 GiB), more than an 80 GB H100 has. So a preset can ask for
the fast size, and on a smaller card the first warm-up step, which runs before the clock and whose
weights, optimizer state and data position the warm-up restores anyway, meets a CUDA out-of-memory
error, halves the micro-batch and tries again. The step's tokens never change, only how they are
split, so the run's updates are the same (train/loop.py's loss normalization).

One process only: with several ranks an out-of-memory error can strike one rank inside a
collective while the others wait in it, so there it stops the run with the fix instead.
"""
from __future__ import annotations

import gc
import math
from typing import Callable, Iterable

import torch

from loopgolf import dist
from loopgolf.data.loader import BatchLoader


class MicroBatchTooLarge(RuntimeError):
    pass


def step_fitting_memory(step: Callable[[], torch.Tensor], loader: BatchLoader, world_size: int,
                        row_lengths: Iterable[int] = (), on_halve: Callable[[int, int], None] = lambda old, new: None,
                        clear: Callable[[], None] = lambda: None) -> torch.Tensor:
    """Run `step`; after an out-of-memory error (one process) halve loader's micro-batch, kept a
    multiple of every row length the run meets, `clear` the half-done step's gradients and retry.
    `on_halve(old, new)` gets the sequences per micro-batch at the current row length."""
    unit = math.lcm(loader.seq_len, *row_lengths)
    while True:
        try:
            return step()
        except torch.OutOfMemoryError as err:
            old = loader.micro
            new_tokens = loader.micro_tokens // 2 // unit * unit
            if world_size > 1 or new_tokens < unit:
                raise MicroBatchTooLarge(
                    f"CUDA out of memory at train.micro_batch_seqs={old} on {world_size} process(es): "
                    f"set a smaller one, e.g. --set train.micro_batch_seqs={max(1, old // 2)} "
                    f"({str(err).splitlines()[0] if str(err) else 'no message'})") from None
        # outside the except block, so the error's traceback no longer holds the step's tensors
        clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        loader.set_micro_tokens(new_tokens)
        on_halve(old, loader.micro)


def warmup_step(trainer) -> torch.Tensor:
    """A Trainer's warm-up step through step_fitting_memory; a halving is logged and recorded in
    result.json's compile block (micro_batch_seqs)."""
    def halved(old: int, new: int) -> None:
        trainer.logger.log("micro_batch_oom", old_seqs=old, new_seqs=new)
        trainer.compile_stats["micro_batch_seqs"] = new

    return step_fitting_memory(trainer._train_step, trainer.loader, dist.info().world_size,
                               [n for n, _ in trainer.table.seq_lens], halved,
                               lambda: [o.zero_grad(set_to_none=True) for o in trainer.opts])
