"""The compile warm-up: every graph a run needs, compiled and warmed before the clock starts.

Each plan stage and training row length (train.seq_len_schedule) the run will meet is its own
graph, and so is each QAT state under noise QAT (STE QAT swaps weight values outside the graph:
compress/qat.py). A graph compiled inside the timed loop costs the run its compile seconds, so
`warm_up` runs `train.warmup_steps` steps in each, checks the compiled gradients against eager
(train/compile_verify.py), and then restores the weights, optimizer states, data position, stage
and row length, so the timed run starts exactly where it would have without the warm-up.

It records, per "stage/row length/qat" key, the seconds of the first step (dynamo tracing plus
compiling or loading the cached graphs), of the other steps and of the check. A slow warm-up then
says where its time went. Issue 15 (a second run of seed-loop45 in <= 30 s): with every cache warm
it took 59.5 s, of which 37.2 s were the first steps of its two QAT graphs (18.5 and 18.7 s against
8.9 and 4.8 s without QAT: bench/results/2026-12-04_seed-loop45_warmup_h200); STE QAT now needs no
graphs of its own.
"""
from __future__ import annotations

import copy
import time

import torch

from loopgolf.train.compile_cache import CompileStats
from loopgolf.train.compile_verify import check_trainer_graph
from loopgolf.train.micro_fit import warmup_step
from loopgolf.train.schedule import Progress

PHASES = ("first_step", "other_steps", "check")


def synced_clock(device: torch.device) -> float:
    """time.perf_counter() once every kernel queued on a CUDA device has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def warm_up(trainer) -> float:
    """Warm every (stage, row length, QAT state) graph of a compiled Trainer; returns the seconds.
    An eager trainer (nothing to compile) returns 0.0 at once."""
    n = trainer.cfg.train.warmup_steps if trainer.model is not trainer.raw_model else 0
    if n <= 0:
        return 0.0
    t0 = time.perf_counter()
    stats = CompileStats().start()
    model_state = copy.deepcopy(trainer.raw_model.state_dict())
    opt_states = [copy.deepcopy(o.state_dict()) for o in trainer.opts]
    position, stage, seq_len = trainer.loader.stream.position, trainer.stage, trainer.loader.seq_len
    qat_on = trainer.qat.enabled
    start = trainer.table.at(Progress(0, 0.0, 0.0))
    # a late QAT switch is another graph only where QAT sits in the forward (compress/qat.py)
    qat_states = (False, True) if (trainer.qat.separate_graphs and not trainer.qat_on) else (trainer.qat_on,)
    checks = trainer.compile_stats["check"] = {}  # key -> compiled vs eager gradients
    by_shape = trainer.compile_stats["warmup_s_by_shape"] = {}  # key -> seconds per PHASES
    for trainer.stage, length in trainer.table.shapes():
        trainer.loader.set_seq_len(length)
        for qat in qat_states:
            trainer.qat.set_enabled(qat)
            key, marks = f"{trainer.stage}/{length}/{int(qat)}", [time.perf_counter()]
            for i in range(n):
                trainer._set_schedules(start)
                warmup_step(trainer)  # the micro-batch halves here if it does not fit (train/micro_fit.py)
                if i == 0:
                    marks.append(synced_clock(trainer.device))
            marks.append(synced_clock(trainer.device))
            if trainer.cfg.train.compile_check:  # after the steps: zero-init projections have moved
                with trainer.qat.applied():
                    checks[key] = check_trainer_graph(trainer).summary()
            marks.append(synced_clock(trainer.device))
            by_shape[key] = {name: round(b - a, 2) for name, a, b in zip(PHASES, marks, marks[1:])}
            trainer.logger.log("warmup_shape", key=key, **by_shape[key])  # a slow warm-up shows its progress
    trainer.qat.set_enabled(qat_on)
    trainer.stage, trainer.loader.stream.position = stage, position
    trainer.loader.set_seq_len(seq_len)
    trainer.raw_model.load_state_dict(model_state)
    for o, s in zip(trainer.opts, opt_states):
        o.load_state_dict(s)
    synced_clock(trainer.device)
    trainer.compile_stats["warmup"] = stats.stop()
    return time.perf_counter() - t0
