"""The training loop: gradient accumulation, data-parallel gradient sums, budget stop, checkpoints.

The loss of a micro-batch is its summed token NLL divided by the GLOBAL token count of the step, and
gradients are summed across ranks, so any split of the step's sequences over ranks and micro-batches
gives the same update. torch.compile's warm-up runs real steps before the clock starts and then
restores weights, optimizer state and data position (baseline L937-970), so compilation never
counts against the budget.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from loopgolf import dist
from loopgolf.compress.qat import apply_qat, plain_state_dict, remove_qat, set_qat_enabled
from loopgolf.config import RunConfig
from loopgolf.data.loader import BatchLoader
from loopgolf.metrics import Logger
from loopgolf.model.recurrence import stage_index
from loopgolf.train.checkpoint import load_checkpoint, save_checkpoint
from loopgolf.train.averaging import WeightAverage
from loopgolf.train.optim import build_optimizers
from loopgolf.train.schedule import Clock, Progress, lr_multiplier, momentum_at, progress_fraction


class TrainingDiverged(RuntimeError):
    pass


def _set_mix_order_reduction(on: bool) -> None:
    """Inductor's mix-order reduction computes wrong gradients for slices of a shared parameter
    (pytorch#193061); train.compile_mix_order_reduction decides. Older torch has no such knob."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config.triton, "mix_order_reduction"):
        inductor_config.triton.mix_order_reduction = on


class Trainer:
    def __init__(self, cfg: RunConfig, model: torch.nn.Module, loader: BatchLoader,
                 device: torch.device, logger: Logger, checkpoint_path: Path | None = None,
                 val_fn: Callable[[torch.nn.Module, int], dict] | None = None):
        self.cfg, self.raw_model, self.loader = cfg, model, loader
        self.device, self.logger, self.val_fn = device, logger, val_fn
        self.checkpoint_path = checkpoint_path
        cuda = device.type == "cuda"
        if cfg.train.compile and cuda:
            _set_mix_order_reduction(cfg.train.compile_mix_order_reduction)
            self.model = torch.compile(model, dynamic=False)
        else:
            self.model = model
        self.opts = build_optimizers(model, cfg.optim, cfg.model, fused=cuda)
        self.params = list(model.parameters())
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        self.step = 0
        self.clock = Clock()
        self.last_loss = float("nan")
        o = cfg.optim
        self.average = WeightAverage(model, o.ema_horizon_frac, o.swa_start_frac, o.swa_every_frac)
        # QAT wraps weights in parametrizations after the optimizers hold the (unchanged) Parameter
        # objects; it is on from the start or switched on at quant.qat_start_frac, and removed at the
        # end of run() so the artifact and the final checkpoint see the plain float weights.
        q = cfg.quant
        self.qat_names = apply_qat(model, q, enabled=q.qat_start_frac == 0) if q.qat != "off" else []
        self.qat_on = bool(self.qat_names) and q.qat_start_frac == 0
        self.stage = len(model.stages) - 1  # index into model.stages; run() picks it by progress

    # --- one optimizer step ---------------------------------------------------------------------
    def _set_schedules(self, prog: Progress) -> float:
        mult = lr_multiplier(prog, self.cfg.optim, self.cfg.train)
        mom = momentum_at(prog, self.cfg.optim, self.cfg.train)
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
                if "momentum" in g:
                    g["momentum"] = mom
        return mult

    def _train_step(self) -> torch.Tensor:
        inv_tokens = 1.0 / self.loader.batch_tokens
        loss_sum = torch.zeros((), device=self.device)
        for x, y in self.loader.next_step():
            with self.amp:
                loss = self.model(x, y, stage=self.stage).sum() * inv_tokens
            loss.backward()
            loss_sum += loss.detach()
        if dist.info().enabled:
            for p in self.params:  # a rank may own no sequences when world > sequences per step
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            dist.all_reduce_grads(self.params)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        for opt in self.opts:
            opt.step()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        return loss_sum

    # --- compile warm-up outside the budget ----------------------------------------------------
    def warmup(self) -> float:
        n = self.cfg.train.warmup_steps if self.model is not self.raw_model else 0
        if n <= 0:
            return 0.0
        t0 = time.perf_counter()
        model_state = copy.deepcopy(self.raw_model.state_dict())
        opt_states = [copy.deepcopy(o.state_dict()) for o in self.opts]
        position = self.loader.stream.position
        final_stage = self.stage
        # every plan stage is its own graph: compile and warm each one now, never in the timed loop
        qat_states = (False, True) if (self.qat_names and not self.qat_on) else (self.qat_on,)
        for stage in range(len(self.raw_model.stages)):
            self.stage = stage
            for qat in qat_states:  # a late QAT switch is another graph: warm it too
                set_qat_enabled(self.raw_model, qat)
                for _ in range(n):
                    self._set_schedules(Progress(0, 0.0, 0.0))
                    self._train_step()
        set_qat_enabled(self.raw_model, self.qat_on)
        self.stage = final_stage
        self.raw_model.load_state_dict(model_state)
        for o, s in zip(self.opts, opt_states):
            o.load_state_dict(s)
        self.loader.stream.position = position
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # --- checkpoints ----------------------------------------------------------------------------
    def save(self) -> None:
        if self.checkpoint_path is None:
            return
        if dist.info().is_main:
            save_checkpoint(self.checkpoint_path, {
                "model": plain_state_dict(self.raw_model),
                "optimizers": [o.state_dict() for o in self.opts],
                "step": self.step,
                "train_seconds": self.clock.seconds,
                "position": self.loader.stream.position,
                "config_json": self.cfg.to_json(),
            })
        dist.barrier()

    def resume(self, path: Path) -> None:
        ck = load_checkpoint(path, map_location=self.device)
        qat = {n[: -len(".weight")]: n for n in self.qat_names}  # checkpoints hold plain names
        self.raw_model.load_state_dict({
            (f"{k[: -len('.weight')]}.parametrizations.weight.original" if k[: -len(".weight")] in qat else k): v
            for k, v in ck["model"].items()})
        for o, s in zip(self.opts, ck["optimizers"]):
            o.load_state_dict(s)
        self.step = int(ck["step"])
        self.clock = Clock(float(ck["train_seconds"]))
        self.loader.stream.position = int(ck["position"])
        self.logger.log("resume", step=self.step, train_seconds=round(self.clock.seconds, 2), path=str(path))

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        t = self.cfg.train
        info = dist.info()
        start_step, start_seconds = self.step, self.clock.seconds
        self.clock.start()
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        agreed_s = self.clock.seconds  # mean clock over ranks, so every rank picks the same schedule
        stage_time: dict[str, tuple[float, int]] = {}  # plan spec -> (seconds, steps)
        while self.step < t.max_steps:
            steps_done = self.step - start_step
            avg = (agreed_s - start_seconds) / steps_done if steps_done else 0.0
            prog = Progress(self.step, agreed_s, avg)
            frac = progress_fraction(prog, t)
            stage = stage_index(self.raw_model.stages, frac, self.step)
            if stage != self.stage:  # another plan: another graph
                self.stage = stage
                plan = self.raw_model.stages[stage].plan
                self.logger.log("plan_stage", step=self.step, frac=round(frac, 4), stage=stage,
                                plan=plan.spec, virtual_layers=plan.n_virtual)
            if self.qat_names and not self.qat_on and frac >= self.cfg.quant.qat_start_frac:
                set_qat_enabled(self.raw_model, True)
                self.qat_on = True
                self.logger.log("qat", step=self.step, frac=round(frac, 4), mode=self.cfg.quant.qat,
                                tensors=len(self.qat_names))
            mult = self._set_schedules(prog)
            t_step = self.clock.seconds
            loss = self._train_step()
            self.step += 1
            stats[0] = loss
            stats[1] = 1.0 if (t.budget_s > 0 and self.clock.seconds >= t.budget_s) else 0.0
            stats[2] = self.clock.seconds
            dist.all_reduce_sum(stats)
            loss_v, stop, clock_sum = stats.tolist()  # one host sync per step, like the baseline's stop all-reduce
            agreed_s = clock_sum / info.world_size
            spec = self.raw_model.stages[self.stage].plan.spec
            secs, n = stage_time.get(spec, (0.0, 0))
            stage_time[spec] = (secs + self.clock.seconds - t_step, n + 1)
            if self.average.enabled:
                expected = t.budget_s / avg if (t.budget_s > 0 and avg > 0) else t.max_steps
                self.average.update(frac, min(expected, t.max_steps))
            self.last_loss = loss_v
            if not math.isfinite(loss_v):
                raise TrainingDiverged(
                    f"step {self.step}: training loss is {loss_v}; lower optim.matrix_lr / optim.tied_embed_lr "
                    f"or set optim.grad_clip (last checkpoint: {self.checkpoint_path or 'none'})")
            if self.step % t.log_every == 0 or self.step == 1 or stop:
                self.logger.log("train", step=self.step, loss=round(loss_v, 4), lr_mult=round(mult, 4),
                                train_s=round(self.clock.seconds, 2),
                                step_ms=round(1000 * self.clock.seconds / max(self.step, 1), 1))
            if t.val_every and self.step % t.val_every == 0 and self.val_fn and not stop:
                self.clock.pause()
                res = self.val_fn(self.raw_model, t.val_tokens)  # eager: no recompiles on ragged batches
                self.logger.log("val", step=self.step, **{k: res[k] for k in ("val_loss", "val_bpb")})
                self.clock.start()
            if t.checkpoint_every and self.step % t.checkpoint_every == 0 and not stop:
                self.clock.pause()
                self.save()
                self.clock.start()
            if stop:
                break
        self.clock.pause()
        if self.average.enabled:
            n_avg = self.average.swap_in()
            self.logger.log("averaging", kind="ema" if self.cfg.optim.ema_horizon_frac else "swa", snapshots=n_avg)
        if self.qat_names:
            remove_qat(self.raw_model)  # the plain float weights go on to GPTQ / the artifact
            self.qat_names, self.qat_on = [], False
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
            "final_train_loss": self.last_loss,
            "world_size": info.world_size,
            # ms/step per plan stage, e.g. before and after the loops switch on
            "stage_ms_per_step": {k: round(1000 * v[0] / v[1], 2) for k, v in stage_time.items()},
            "stage_steps": {k: v[1] for k, v in stage_time.items()},
        }
        flops = self.raw_model.flops_per_token(self.loader.seq_len, stage=self.stage)
        out["model_tflops_per_s"] = round(flops * out["tokens_per_s"] / 1e12, 2)
        if self.device.type == "cuda":
            out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return out
