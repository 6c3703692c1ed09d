"""The training loop: gradient accumulation, data-parallel gradient sums, budget stop, checkpoints.

The loss of a micro-batch is its summed token NLL divided by the GLOBAL token count of the step, and
gradients are summed across ranks, so any split of the step's sequences over ranks and micro-batches
gives the same update. torch.compile's warm-up runs real steps before the clock starts and then
restores weights, optimizer state and data position (baseline L937-970), so compilation never
counts against the budget; it warms every (plan stage, row length) pair the run will meet. Every
progress-dependent decision (plan stage, row length, QAT, LR, momentum, averaging, checkpoints) is one
trigger-table row per step (train/triggers.py); the plan stage is a forward argument, never state.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from loopgolf import dist
from loopgolf.compress.qat import QatWeights, plain_state_dict
from loopgolf.config import RunConfig
from loopgolf.data.loader import BatchLoader
from loopgolf.metrics import Logger
from loopgolf.train.averaging import WeightAverage
from loopgolf.train.checkpoint import CheckpointStore, check_resumable
from loopgolf.train.compile_cache import CompileStats, compile_model, configure_caches
from loopgolf.train.guards import DegenerateModelError, StallGuard, TrainingDiverged
from loopgolf.train.optim import build_optimizers
from loopgolf.train.progress import TrainProgress
from loopgolf.train.schedule import Clock, Progress
from loopgolf.train.step_stats import LaggedStats, StepRecord
from loopgolf.train.triggers import Triggers, TriggerTable
from loopgolf.train.warmup import warm_up

__all__ = ["Trainer", "TrainingDiverged", "DegenerateModelError"]


def _set_mix_order_reduction(on: bool) -> None:
    """Inductor's mix-order reduction computes wrong gradients for slices of a shared parameter
    (pytorch#193061); train.compile_mix_order_reduction decides. Older torch has no such knob."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config.triton, "mix_order_reduction"):
        inductor_config.triton.mix_order_reduction = on


class Trainer:
    def __init__(self, cfg: RunConfig, model: torch.nn.Module, loader: BatchLoader,
                 device: torch.device, logger: Logger, checkpoints: CheckpointStore | None = None,
                 val_fn=None, progress: TrainProgress | None = None):
        self.cfg, self.raw_model, self.loader = cfg, model, loader
        self.device, self.logger, self.val_fn = device, logger, val_fn
        cuda = device.type == "cuda"
        self.compiled = bool(cfg.train.compile and cuda)
        self.compile_cache_dir = ""
        if self.compiled:
            _set_mix_order_reduction(cfg.train.compile_mix_order_reduction)
            self.compile_cache_dir = configure_caches(cfg.train.compile_cache_dir, cfg.train.sdpa_backend)
            self.model = compile_model(model, cfg.train)
        else:
            self.model = model
        self.opts = build_optimizers(model, cfg.optim, cfg.model, fused=cuda)
        self.params = list(model.parameters())
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        self.table = TriggerTable(cfg, getattr(model, "stages", ()))
        self.store = checkpoints  # where resume() looks; periodic saves only when the policy says so
        self.checkpoints = checkpoints if self.table.checkpoints else None
        self.progress = progress or TrainProgress(enabled=False)
        self.step = 0
        self.clock = Clock()
        self.last_loss = float("nan")
        self.stage = max(0, len(self.table.stages) - 1)  # index into model.stages, passed to forward
        self.ck_slot = 0  # the checkpoint slot last written (slot 0 = the start: nothing to save)
        self.finished = False  # the weights are final (averaged, plain): from the last checkpoint
        self.end_position: int | None = None
        self.compile_stats: dict[str, dict] = {}  # "warmup" / "loop" -> CompileStats deltas
        o = cfg.optim
        self.average = WeightAverage(model, o.ema_horizon_frac, o.swa_start_frac, o.swa_every_frac)
        self.stall = StallGuard(cfg.model.vocab_size, cfg.train.stall_frac)
        # QAT (compress/qat.py) after the optimizers hold the (unchanged) Parameter objects; it
        # switches on when the trigger row says so and is removed at the end of run(), so the
        # artifact and the final checkpoint see the plain float weights.
        self.qat = QatWeights(model, cfg.quant, enabled=cfg.quant.qat_start_frac == 0)
        self.grad_sync = cfg.train.grad_sync if dist.info().enabled else "none"
        self.ddp = self._wrap_ddp() if self.grad_sync == "ddp" else None

    def _wrap_ddp(self) -> torch.nn.Module:
        """Under torchrun with train.grad_sync=ddp (one process: no wrapper, runs are unchanged):
        DDP around the model the trainer runs (self.model: compiled on CUDA, so DDP(compile(m)),
        the order torch recommends; dist.wrap_ddp cites it). self.model and self.raw_model stay as
        they are: checkpoints, averages and artifacts use raw_model's names (no "module." prefix).

        - Shared / looped blocks need nothing: autograd sums every use into one AccumulateGrad.
        - Parameters unused in a plan stage (e.g. model.untie_repeat_mlp's MLPs before the loops
          switch on) never fire that hook, and DDP would wait for them forever; so
          find_unused_parameters is on exactly when one eager probe pass per stage leaves some
          parameter without gradient (it costs a graph walk per step, so not by default).
          static_graph stays off: a stage switch changes the graph and the used set mid-run.
        - zero_grad(set_to_none=True): an unused parameter's grad stays None on every rank, so Muon
          and AdamW skip it, as on one process."""
        probe = torch.zeros((1, self.loader.seq_len), dtype=torch.long, device=self.device)
        unused = False
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for stage in range(max(1, len(getattr(self.raw_model, "stages", ())))):
                with self.amp:
                    loss = self.raw_model(probe, probe, stage=stage).sum()
                loss.backward()
                unused = unused or any(p.grad is None for p in self.params)
                for p in self.params:
                    p.grad = None
        return dist.wrap_ddp(self.model, self.device, find_unused=unused)

    @property
    def qat_names(self) -> list[str]:
        return self.qat.names

    @property
    def qat_on(self) -> bool:
        return self.qat.on

    def _set_schedules(self, row: Triggers) -> None:
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * row.lr_mult
                if "momentum" in g:
                    g["momentum"] = row.momentum

    def _train_step(self) -> torch.Tensor:
        loss_sum = self._forward_backward(self.loader.next_step())
        self._optimizer_step()
        return loss_sum

    def _forward_backward(self, micro_batches) -> torch.Tensor:
        """Summed loss / global tokens over this rank's micro-batches; gradients accumulate. Under
        DDP only the last micro-batch's backward all-reduces (the others run under no_sync)."""
        with self.qat.applied():  # ste: one step's forwards and backwards on the export grid
            return self._accumulate(micro_batches)

    def _accumulate(self, micro_batches) -> torch.Tensor:
        inv_tokens = 1.0 / self.loader.batch_tokens
        loss_sum = torch.zeros((), device=self.device)
        model = self.model if self.ddp is None else self.ddp
        if self.ddp is not None and not micro_batches:  # no sequences here (world > sequences per
            probe = torch.zeros((1, self.loader.seq_len), dtype=torch.long, device=self.device)
            micro_batches, inv_tokens = [(probe, probe)], 0.0  # step): join DDP's sums with zeros
        for i, (x, y) in enumerate(micro_batches):
            with dist.grad_sync(model, sync=i == len(micro_batches) - 1):
                with self.amp:
                    loss = model(x, y, stage=self.stage).sum() * inv_tokens
                loss.backward()
            loss_sum += loss.detach()
        return loss_sum

    def _optimizer_step(self) -> None:
        """Gradient sync across ranks (allreduce; DDP summed them during backward), clip, every
        optimizer's step (Muon sharded over ranks), zero the gradients (to None: see _wrap_ddp)."""
        if self.grad_sync == "allreduce":
            dist.all_reduce_grads(self.params)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        for opt in self.opts:
            opt.step()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)

    def warmup(self) -> float:
        """Every graph the run needs compiled and warmed before the clock (train/warmup.py); seconds."""
        return warm_up(self)

    def state(self, finished: bool = False) -> dict:
        """Everything a resumed run needs to continue bit for bit."""
        rng = {"torch": torch.get_rng_state()}  # QAT noise draws from it; data order is positional
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": plain_state_dict(self.raw_model),
            "optimizers": [o.state_dict() for o in self.opts],
            "average": self.average.state_dict(),
            "stall": self.stall.state_dict(),
            "step": self.step,
            "train_seconds": self.clock.seconds,
            # a finished run's position is where training stopped (calibration reads on from there)
            "position": self.end_position if finished and self.end_position is not None
            else self.loader.stream.position,
            "stage": self.stage, "qat_on": self.qat_on, "ck_slot": self.ck_slot,
            "finished": finished, "last_loss": self.last_loss,
            "rng": rng,
            "config_json": self.cfg.to_json(),
        }

    def save(self, finished: bool = False) -> None:
        if self.checkpoints is None:
            return
        if dist.info().is_main:
            path = self.checkpoints.save(self.state(finished), self.step)
            self.logger.log("checkpoint", step=self.step, path=str(path), console=False)
        dist.barrier()

    def resume(self, ck: dict | None = None, path=None) -> None:
        """Continue from checkpoint `ck` (default: the store's newest); refuses one whose config
        changes tensor shapes."""
        if ck is None:
            if self.store is None:
                raise ValueError("Trainer.resume needs a checkpoint store")
            ck, path = self.store.load_latest(map_location=self.device)
        check_resumable(ck, path, self.cfg.to_dict())
        self.raw_model.load_state_dict(self.qat.with_parametrized_names(ck["model"]))  # plain names
        for o, s in zip(self.opts, ck["optimizers"]):
            o.load_state_dict(s)
        self.step = int(ck["step"])
        self.clock = Clock(float(ck["train_seconds"]))
        self.loader.stream.position = int(ck["position"])
        self.stage, self.ck_slot = int(ck.get("stage", -1)), int(ck.get("ck_slot", 0))
        self.finished, self.last_loss = bool(ck.get("finished")), float(ck.get("last_loss", math.nan))
        if "average" in ck:
            self.average.load_state_dict(ck["average"])
        if "stall" in ck:
            self.stall.load_state_dict(ck["stall"])
        if self.qat_names and bool(ck.get("qat_on")) != self.qat_on:
            self.qat.set_enabled(bool(ck.get("qat_on")))
        rng = ck.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self.logger.log("resume", step=self.step, train_seconds=round(self.clock.seconds, 2), path=str(path))

    def _apply(self, row: Triggers) -> None:
        """Switch the plan stage, the row length and QAT as the step's trigger row says."""
        if row.seq_len != self.loader.seq_len:
            self.loader.set_seq_len(row.seq_len)
            self.logger.log("seq_len", step=self.step, frac=round(row.frac, 4), seq_len=row.seq_len,
                            micro_batch_seqs=self.loader.micro)
        if row.stage != self.stage:
            self.stage = row.stage
            plan = self.table.stages[row.stage].plan if self.table.stages else None
            self.logger.log("plan_stage", step=self.step, frac=round(row.frac, 4), stage=row.stage,
                            plan=getattr(plan, "spec", ""), virtual_layers=getattr(plan, "n_virtual", 0))
        if self.qat_names and row.qat and not self.qat_on:
            self.qat.set_enabled(True)
            self.logger.log("qat", step=self.step, frac=round(row.frac, 4), mode=self.cfg.quant.qat,
                            tensors=len(self.qat_names))
        self._set_schedules(row)

    def _diverged(self, loss_v: float, step: int) -> TrainingDiverged:
        last = self.checkpoints.latest() if self.checkpoints else None
        where = (f"; the last checkpoint {last} was written before it (rerun with --resume after "
                 "changing the learning rate)" if last else "; no checkpoint was written")
        return TrainingDiverged(
            f"step {step}: training loss is {loss_v}; lower optim.matrix_lr / optim.tied_embed_lr "
            f"or set optim.grad_clip{where}")

    def run(self) -> dict:
        """Train until the budget, max_steps or a stop. Step N's statistics are read after step
        N+1 is launched (train/step_stats.py), so the host's per-step work overlaps the GPU's."""
        t = self.cfg.train
        start_step, start_seconds = self.step, self.clock.seconds
        self.clock.start()
        self._stats = LaggedStats(self.device)
        self._agreed = (self.clock.seconds, self.step)  # (mean clock over ranks, steps done by then)
        self._mark = self.clock.seconds  # clock when the last step's end was observed
        self._stage_time: dict[str, tuple[float, int]] = {}  # plan spec -> (seconds, steps)
        self._run_start = (start_step, start_seconds)
        compiles = CompileStats().start()
        stop = False
        while self.step < t.max_steps and not self.finished and not stop:
            agreed_s, agreed_steps = self._agreed
            avg = agreed_s / agreed_steps if agreed_steps else 0.0
            est_s = agreed_s + (self.step - agreed_steps) * avg  # the clock at this step's start
            row = self.table.at(Progress(self.step, est_s, avg))
            if self.checkpoints and row.checkpoint_slot > self.ck_slot:
                if self._drain():
                    break
                self.ck_slot = row.checkpoint_slot
                self.clock.pause()
                self.save()
                self.clock.start()
            self._apply(row)
            loss = self._train_step()
            self.step += 1
            if self.average.enabled:
                self.average.update(row.frac, row.expected_steps)
            spec = self.table.stages[self.stage].plan.spec if self.table.stages else "-"
            spec += f" T={self.loader.seq_len}" if t.seq_len_schedule else ""
            rec = StepRecord(self.step, spec, row.frac, row.lr_mult)
            prev = self._stats.take()  # waits for the previous step; this one stays queued
            now = self.clock.seconds
            # the vote is read after the next step is launched: it asks whether that one would end late
            self._stats.put(rec, loss, self.table.out_of_time(now + 2 * avg), now)
            if prev is not None:
                stop = self._after_step(prev)
            if t.val_every and self.step % t.val_every == 0 and self.val_fn and not stop:
                if self._drain():
                    break
                self.clock.pause()
                with self.qat.applied():
                    res = self.val_fn(self.raw_model, t.val_tokens)  # eager: no recompiles on ragged batches
                self.logger.log("val", step=self.step, **{k: res[k] for k in ("val_loss", "val_bpb")})
                self.clock.start()
        self._drain(final=True)
        self.clock.pause()
        self.progress.close()
        self.compile_stats["loop"] = compiles.stop()
        if self.compile_stats["loop"]["graphs"]:
            self.logger.log("recompiled_in_loop", graphs=self.compile_stats["loop"]["graphs"],
                            hint="a graph was compiled on the clock; raise train.warmup_steps")
        self.end_position = self.loader.stream.position
        self.loader.set_seq_len(self.cfg.data.seq_len)  # calibration and the FLOP count use the final rows
        return self._finish(start_step, start_seconds, self._stage_time)

    def _drain(self, final: bool = False) -> bool:
        """Read every queued step (waiting for them); True when one of them voted to stop."""
        stop = False
        while rec := self._stats.take():
            stop = self._after_step(rec, final=final and not len(self._stats)) or stop
        return stop

    def _after_step(self, rec: StepRecord, final: bool = False) -> bool:
        """Guards, per-stage time, progress and the log line for a completed step; returns its stop vote."""
        t = self.cfg.train
        now = self.clock.seconds
        secs, n = self._stage_time.get(rec.spec, (0.0, 0))
        self._stage_time[rec.spec] = (secs + now - self._mark, n + 1)
        self._mark = now
        self._agreed = (rec.clock, rec.step - 1)  # the clock was read when step rec.step - 1 had ended
        self.last_loss = rec.loss
        if not math.isfinite(rec.loss):
            raise self._diverged(rec.loss, rec.step)
        self.stall.check(rec.loss, rec.step, rec.frac)
        run_s = now - self._run_start[1]
        tok_s = (rec.step - self._run_start[0]) * self.loader.batch_tokens / run_s if run_s > 0 else 0.0
        done = self.table.fraction(Progress(rec.step, now, now / max(rec.step, 1)))  # after the step
        self.progress.update(done, rec.step, rec.loss, tok_s)
        if rec.step % t.log_every == 0 or rec.step == 1 or rec.stop or final:
            self.logger.log("train", console=not self.progress.enabled, step=rec.step,
                            loss=round(rec.loss, 4), lr_mult=round(rec.lr_mult, 4),
                            train_s=round(now, 2), step_ms=round(1000 * now / max(rec.step, 1), 1))
        return rec.stop

    def _finish(self, start_step: int, start_seconds: float, stage_time: dict) -> dict:
        """Swap in the averages and drop QAT (the final weights), then checkpoint them: resuming
        that checkpoint goes straight to compression, and `loopgolf fit` reads the final weights."""
        if self.average.enabled and not self.finished:
            n_avg = self.average.swap_in()
            self.logger.log("averaging", kind="ema" if self.cfg.optim.ema_horizon_frac else "swa", snapshots=n_avg)
        self.qat.remove()  # the plain float weights go on to GPTQ / the artifact
        if not self.finished:
            self.save(finished=True)
            self.finished = True
        seconds = self.clock.seconds
        steps = self.step - start_step
        run_seconds = seconds - start_seconds
        tokens = steps * self.loader.batch_tokens
        out = {
            "steps": self.step,
            "train_seconds": round(seconds, 3),
            "ms_per_step": round(1000 * run_seconds / max(steps, 1), 2),
            "tokens_per_s": round(tokens / run_seconds, 1) if run_seconds > 0 else 0.0,
            "train_tokens": self.step * self.loader.batch_tokens,
            "final_train_loss": self.last_loss if math.isfinite(self.last_loss) else None,
            "world_size": dist.info().world_size,
            # ms/step per plan stage, e.g. before and after the loops switch on
            "stage_ms_per_step": {k: round(1000 * v[0] / v[1], 2) for k, v in stage_time.items()},
            "stage_steps": {k: v[1] for k, v in stage_time.items()},
        }
        out["compile"] = {**self.compile_stats, "compiled": self.compiled, "mode": self.cfg.train.compile_mode,
                          "cache_dir": self.compile_cache_dir}
        flops = self.raw_model.flops_per_token(self.loader.seq_len, stage=self.stage)
        out["model_tflops_per_s"] = round(flops * out["tokens_per_s"] / 1e12, 2)
        if self.device.type == "cuda":
            out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return out
