"""The phases of a run, one function each, every one timed into result.json `phases`.

    train -> calibrate (GPTQ Hessians) -> pre-quant eval -> fit | quantize + pack -> write
    artifact -> reload (decompress) -> evaluate (the run's scoring recipe)

`RunContext` carries what every phase needs (config, run folder, device, rank info, logger,
validation set, phase timer); pipeline.py strings the phases together. Phase keys in `phases`:
compile_warmup_s, train_loop_s, calibration_s, train_plus_calibration_s, prequant_eval_s, fit_s,
gptq_s, compress_s, decompress_s, eval_s. The artifact is written through data/atomic.py; a failed
write (a full disk) leaves the old files as they were, keeps the trained weights in a checkpoint and
says how to finish with `--resume`.
"""
from __future__ import annotations

import dataclasses
import errno
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loopgolf import dist
from loopgolf.compress.artifact import ArtifactError, inspect_artifact, pack, read_artifact
from loopgolf.compress.fit import FitError, FitResult, fit_to_budget
from loopgolf.compress.fit_gptq import fit_gptq
from loopgolf.compress.gptq import collect_hessians, gptq_quantize_state, sample_calibration
from loopgolf.config import QuantConfig, RunConfig
from loopgolf.data.atomic import atomic_write_bytes
from loopgolf.compress.budget import budget_report, format_budget
from loopgolf.data.loader import BatchLoader, token_stream
from loopgolf.eval.bpb import NonFiniteScoreError
from loopgolf.eval.recipe import evaluate as evaluate_recipe
from loopgolf.metrics import Logger
from loopgolf.model.blocks import attention_backend
from loopgolf.model.gpt import GPT
from loopgolf.train.checkpoint import CheckpointStore, CheckpointWriteError
from loopgolf.train.guards import DegenerateModelError, check_finite_eval
from loopgolf.train.loop import Trainer
from loopgolf.train.progress import TrainProgress


class ArtifactWriteError(RuntimeError):
    """The artifact could not be written (e.g. the disk is full); the message says where the
    trained weights were kept and how to finish the run."""


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path
    device: torch.device
    info: dist.DistInfo
    logger: Logger
    valset: object  # data/valset.py ValSet
    env: dict
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, key: str):
        """Time the block into phases[key] (GPU work included)."""
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.phases[key] = round(time.perf_counter() - t0, 2)


# --- build and train --------------------------------------------------------------------------------------
def build_trainer(ctx: RunContext, train_paths: list, store: CheckpointStore) -> Trainer:
    """The model, its batch loader and the trainer (periodic validation = plain bpb)."""
    cfg, device, info, logger = ctx.cfg, ctx.device, ctx.info, ctx.logger
    model = GPT(cfg.model).to(device)
    logger.log("attention", backend=attention_backend(device.type))
    logger.log("model", params=model.num_params(), plan=" ".join(map(str, model.plan.schedule)),
               blocks=model.plan.n_blocks, virtual_layers=model.plan.n_virtual)
    stream = token_stream(train_paths, cfg.data.sampling, cfg.train.seed)
    loader = BatchLoader(stream, cfg.data.seq_len, cfg.train.batch_tokens, cfg.train.micro_batch_seqs,
                         info.rank, info.world_size, device)

    def val_fn(m: torch.nn.Module, max_tokens: int) -> dict:
        return score(m, ctx.valset, cfg, device, recipe=False, max_tokens=max_tokens)

    return Trainer(cfg, model, loader, device, logger, checkpoints=store, val_fn=val_fn,
                   progress=TrainProgress(enabled=None if info.is_main else False))


def train(ctx: RunContext, trainer: Trainer) -> dict:
    with ctx.timed("compile_warmup_s"):
        warm_s = trainer.warmup()
    if warm_s:
        ctx.logger.log("compile_warmup", seconds=round(warm_s, 1), steps=ctx.cfg.train.warmup_steps,
                       by_shape=trainer.compile_stats.get("warmup_s_by_shape"))
    result = trainer.run()
    ctx.phases["train_loop_s"] = result["train_seconds"]
    ctx.logger.log("train_done", **result)
    return result


# --- calibrate ----------------------------------------------------------------------------------
def calibrate(ctx: RunContext, model: torch.nn.Module, loader: BatchLoader, result: dict):
    """Hessians for GPTQ from the next training batches (inside the budget: they stop at the
    reserve) or from the model's own samples (no data access; after training), summed over ranks."""
    cfg, q, device = ctx.cfg, ctx.cfg.quant, ctx.device
    if not q.gptq:
        return None
    t0 = time.perf_counter()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if q.gptq_calib == "train":
        batches = []
        while len(batches) < q.gptq_calib_batches:
            batches += [x for x, _ in loader.next_step()]
        batches = batches[: q.gptq_calib_batches]
    else:
        with amp:
            batches = sample_calibration(model, q.gptq_calib_batches, cfg.data.seq_len, q.gptq_calib_temp)
    reserve = q.gptq_reserve_s if (q.gptq_calib == "train" and cfg.train.budget_s > 0) else 0.0
    if reserve > 0:  # calibration on training data counts against the training budget
        batches = UntilDeadline(batches, t0 + reserve, device)
    with amp:
        hess = collect_hessians(model, batches, device, embed=q.gptq_embed)
    if dist.info().enabled:
        for name, h in hess.items():
            hess[name] = dist.all_reduce_sum(h.to(device)).cpu()  # NCCL reduces device tensors
    if device.type == "cuda":
        torch.cuda.synchronize()
    calib_s = time.perf_counter() - t0
    used = batches.used if isinstance(batches, UntilDeadline) else len(batches)
    ctx.phases["calibration_s"] = round(calib_s, 2)
    if q.gptq_calib == "train":
        ctx.phases["train_plus_calibration_s"] = round(result["train_seconds"] + calib_s, 2)
    ctx.logger.log("calibration", source=q.gptq_calib, seconds=round(calib_s, 2), batches=used,
                   hessians=len(hess), reserve_s=reserve)
    result["calibration_batches"] = used
    return hess


class UntilDeadline:
    """Iterates `batches` while the next one should finish before `deadline` (judged by the last
    batch's time, after the GPU catches up); always at least one. `used` counts those handed out."""

    def __init__(self, batches: list, deadline: float, device: torch.device) -> None:
        self.batches, self.deadline, self.device = batches, deadline, device
        self.used = 0

    def __iter__(self):
        last = time.perf_counter()
        for x in self.batches:
            if self.used:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                if now + (now - last) >= self.deadline:
                    return
                last = now
            self.used += 1
            yield x


# --- evaluate -----------------------------------------------------------------------------------
def evaluate(ctx: RunContext, model: torch.nn.Module, key: str, recipe: bool,
             max_tokens: int | None = None) -> dict:
    """Score `model` on the run's validation set: plain bpb (recipe=False) or the run's scoring
    recipe cfg.eval; timed into phases[key]; a non-finite score stops the run."""
    with ctx.timed(key):
        return score(model, ctx.valset, ctx.cfg, ctx.device, recipe=recipe, max_tokens=max_tokens,
                     what=f"{ctx.run_dir}: {key.removesuffix('_s')}")


def score(model: torch.nn.Module, valset, cfg: RunConfig, device: torch.device, recipe: bool = True,
          max_tokens: int | None = None, batch_tokens: int = 0, what: str = "evaluation") -> dict:
    """val_loss / val_bpb of `model`: the scoring recipe cfg.eval (eval/recipe.py), or plain bpb in
    training-sized batches (recipe=False: pre-quantization and periodic validation). A NaN or
    infinite score raises DegenerateModelError naming `what`."""
    ecfg = cfg.eval
    if not recipe:
        seqs = cfg.train.micro_batch_seqs * dist.info().world_size
        ecfg = dataclasses.replace(ecfg, method="plain", context=0, batch_tokens=seqs * cfg.data.seq_len)
    elif batch_tokens:
        ecfg = dataclasses.replace(ecfg, batch_tokens=batch_tokens)
    try:
        res = evaluate_recipe(model, valset, ecfg, device, cfg.data.seq_len, max_tokens=max_tokens)
    except NonFiniteScoreError as e:
        raise DegenerateModelError(f"{what}: {e}; the model is broken (weights or logits not "
                                   "finite): lower optim.matrix_lr / optim.tied_embed_lr or set "
                                   "optim.grad_clip, then train again") from None
    return check_finite_eval(res, what)


# --- quantize, fit, pack, write -----------------------------------------------------------------
def ship(ctx: RunContext, trainer: Trainer, hessians, code: int, path: Path, store: CheckpointStore,
         result: dict) -> dict:
    """fit | quantize + pack, then write the artifact; returns the budget report (rank 0 only)."""
    state = shipped_state(trainer.raw_model)
    blob = fit(ctx, state, hessians, code, result)
    if blob is None:
        blob = pack_artifact(ctx, state, quantize(ctx, state, hessians))
    report = write_artifact(ctx, path, blob, trainer, store)
    sizes = budget_report(report.total_bytes, code)
    ctx.logger.text(report.format_table())
    ctx.logger.log("artifact", path=str(path), **sizes)
    ctx.logger.text(format_budget(sizes))
    return sizes


def shipped_state(model: GPT) -> dict[str, torch.Tensor]:
    """What ships: detached CPU tensors without training-only parameters (MTP heads)."""
    return model.shipped_state()


def shipped_meta(ctx: RunContext, qcfg: QuantConfig) -> dict:
    """The artifact's embedded metadata: the shipped config (training-only parts off, the quant
    knobs actually used) and the code fingerprint."""
    shipped = dataclasses.replace(ctx.cfg, model=dataclasses.replace(ctx.cfg.model, mtp_heads=0))
    conf = shipped.to_dict()
    conf["quant"] = dataclasses.asdict(qcfg)
    return {"config": conf, "code_sha256": ctx.env["code_sha256"], "loopgolf": ctx.env["loopgolf"]}


def fit(ctx: RunContext, state: dict, hessians, code: int, result: dict) -> bytes | None:
    """The artifact fitted under quant.fit_target (None when off or impossible: the error is kept
    in result["fit"] and the artifact is written as configured)."""
    q = ctx.cfg.quant
    if not q.fit_target:
        return None
    t0 = time.perf_counter()
    try:
        if q.gptq:
            res = fit_gptq(state, hessians or {}, q, q.fit_target, code, lambda c: shipped_meta(ctx, c), ctx.device)
        else:
            res = fit_to_budget(state, q, q.fit_target, code, lambda c: shipped_meta(ctx, c))
    except FitError as e:
        ctx.logger.log("fit_failed", target=q.fit_target, error=str(e))
        result["fit"] = {"target_bytes": q.fit_target, "error": str(e)}
        return None
    ctx.phases["fit_s"] = round(time.perf_counter() - t0, 2)
    result["fit"] = fit_summary(res)
    ctx.logger.log("fit", **{k: v for k, v in result["fit"].items() if k != "trials"},
                   n_trials=len(res.trials), seconds=ctx.phases["fit_s"])
    return res.blob


def fit_summary(res: FitResult) -> dict:
    q = res.qcfg
    return {"target_bytes": res.target_bytes, "total_bytes": res.total_bytes, "scheme": q.scheme,
            "clip": q.clip, "sdclip_k": q.sdclip_k, "prune_frac": q.prune_frac, "trials": res.trials}


def quantize(ctx: RunContext, state: dict, hessians) -> dict | None:
    """GPTQ-rounded parts of the matrices (None without GPTQ: pack rounds to nearest)."""
    if not hessians:
        return None
    with ctx.timed("gptq_s"):
        return gptq_quantize_state(state, hessians, ctx.cfg.quant, device=ctx.device)


def pack_artifact(ctx: RunContext, state: dict, parts: dict | None) -> bytes:
    with ctx.timed("compress_s"):
        return pack(state, shipped_meta(ctx, ctx.cfg.quant), ctx.cfg.quant, precomputed=parts)


def write_artifact(ctx: RunContext, path: Path, blob: bytes, trainer: Trainer, store: CheckpointStore):
    """Write the artifact atomically; on failure keep the trained weights and say how to finish."""
    try:
        atomic_write_bytes(path, blob)
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        kept = keep_weights(trainer, store)
        raise ArtifactWriteError(
            f"{path}: cannot write the artifact ({why}); files already there are unchanged; "
            + (f"the trained weights are in {kept}: free space (moving it into {store.folder}/ if it "
               "is elsewhere) and rerun with --resume to write the artifact"
               if kept else "the trained weights could not be saved anywhere: free space and train again"))
    return inspect_artifact(blob, str(path))


def keep_weights(trainer: Trainer, store: CheckpointStore) -> Path | None:
    """The finished-training checkpoint: the one the trainer wrote, else a new one in the run's
    checkpoint folder, else a rescue file in the temporary directory. None if nothing was written."""
    latest = store.latest()
    if latest is not None and trainer.checkpoints is not None:
        return latest  # written at the end of the loop: resuming from it goes straight to compression
    state = trainer.state(finished=True)
    try:
        return store.save(state, trainer.step)
    except CheckpointWriteError:
        return store.rescue(state, trainer.step)


# --- reload -------------------------------------------------------------------------------------
def model_from_artifact(artifact: Path, device: torch.device | str) -> tuple[GPT, RunConfig]:
    """The shipped model, rebuilt from the artifact file alone (its embedded config and weights)."""
    state, meta = read_artifact(artifact)
    cfg = RunConfig.from_dict(meta["config"]).validate()
    model = GPT(cfg.model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} (config says {shapes[k]})" for k, v in state.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected or wrong:
        raise ArtifactError(f"{artifact}: artifact tensors do not match its embedded config (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); "
                            "the file was not written by this loopgolf for this config: re-run `loopgolf train`")
    model.load_state_dict(state)
    return model.to(device), cfg
