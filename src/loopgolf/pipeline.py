"""The main job: train -> calibrate -> pre-quantization eval -> compress to an artifact; and
artifact -> the run's score.

`train_and_compress` runs on every rank (launched plainly or by torchrun) as a short sequence of the
phases in run_phases.py and writes, under the run directory: config.json, env.json (provenance,
written once: a later start appends to attempts.jsonl instead), train.log, metrics.jsonl,
checkpoints/, model.lgz (the artifact) and a partial result.json. With quant.fit_target set, the
artifact is fitted just under that many bytes and the config embedded in it names the knobs chosen.
`evaluate_artifact` rebuilds the model from the artifact file alone (its embedded config and
weights) and scores it with the embedded scoring recipe (cfg.eval); the CLI calls it in a fresh
process. Every JSON file is strict (no NaN): a non-finite score stops the run with an error instead.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from loopgolf import dist, run_phases as phases
from loopgolf.compress import budget
from loopgolf.config import ConfigError, RunConfig
from loopgolf.data.atomic import atomic_write_text
from loopgolf.data.shards import check_vocab, list_shards
from loopgolf.data.tokenizer import load_tokenizer
from loopgolf.data.valset import check_tokenizer, load_val_set
from loopgolf.metrics import Logger, provenance
from loopgolf.run_phases import ArtifactWriteError, RunContext, model_from_artifact
from loopgolf.train.checkpoint import CheckpointError, CheckpointStore, check_resumable

__all__ = ["ARTIFACT_NAME", "ArtifactWriteError", "evaluate_artifact", "model_from_artifact",
           "resolve_device", "train_and_compress", "write_json", "load_val", "check_train_shards"]

ARTIFACT_NAME = "model.lgz"
CHECKPOINT_DIR = "checkpoints"
ATTEMPTS_NAME = "attempts.jsonl"


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available; use --set train.device=cpu")
        return torch.device("cuda", dist.local_rank_hint())
    if kind != "cpu":
        raise ConfigError(f"device {kind!r}: choose auto, cpu or cuda")
    return torch.device("cpu")


def write_json(path: Path, obj) -> None:
    """Atomic, strict JSON (a NaN raises instead of writing a non-JSON `NaN`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def load_val(pattern: str, tokenizer: str, vocab_size: int):
    """The one validation preamble (data/valset.py): tokens checked against the tokenizer and its
    manifest, with the bytes each target stands for."""
    return load_val_set(pattern, tokenizer, vocab_size)


def check_train_shards(pattern: str, tokenizer: str) -> list:
    """Training shards of `pattern`, made with `tokenizer` (manifest SHA-256, id range)."""
    paths = list_shards(pattern)
    check_tokenizer(paths, tokenizer)
    check_vocab(paths, load_tokenizer(tokenizer).get_piece_size())
    return paths


# --- provenance ---------------------------------------------------------------------------------
def _record_attempt(run_dir: Path, **fields) -> None:
    """Append one record to attempts.jsonl: a "start" per start (a killed run leaves just that one)
    and an "end" with the outcome. config.json / env.json are written only by the first start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ATTEMPTS_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields},
                           sort_keys=True) + "\n")


def _check_start(cfg: RunConfig, run_dir: Path, store: CheckpointStore, resume: bool):
    """Everything that can refuse a start, before the run folder is touched."""
    if not resume:
        if store.latest() is not None:
            raise CheckpointError(f"{run_dir}: this run folder already holds checkpoints; pass --resume "
                                  "to continue it, or choose another --run-dir")
        return None
    ck, path = store.load_latest()
    check_resumable(ck, path, cfg.to_dict())
    return ck, path


# --- the run ------------------------------------------------------------------------------------
def train_and_compress(cfg: RunConfig, run_dir: Path, resume: bool = False,
                       code_bytes: int | None = None) -> dict:
    """Train, evaluate before quantization, write the artifact and result.json. `code_bytes`
    counts the code that ships (e.g. the packed single-file export) in the budget report and the
    fit target; None counts compress.budget.code_bytes() (the core sources, or the exported file
    when running from one)."""
    cfg.validate()
    device = resolve_device(cfg.train.device)
    info = dist.init(device.type)
    run_dir = Path(run_dir)
    store = CheckpointStore(run_dir / CHECKPOINT_DIR)
    env = provenance()
    start_rec = dict(event="start", resume=resume, argv=env["argv"], code_sha256=env["code_sha256"],
                     config_sha256=hashlib.sha256(cfg.to_json().encode()).hexdigest())
    existed = run_dir.exists()
    try:  # everything that can refuse the start, before the run folder is touched
        start = _check_start(cfg, run_dir, store, resume)
        valset = load_val(cfg.data.val, cfg.data.tokenizer, cfg.model.vocab_size)
        train_paths = check_train_shards(cfg.data.train, cfg.data.tokenizer)
    except BaseException as e:
        if info.is_main and existed:  # a new folder is not created just to record a refusal
            _record_attempt(run_dir, **start_rec)
            _record_attempt(run_dir, event="end", outcome=f"error: {type(e).__name__}: {e}"[:500])
        raise
    if info.is_main:
        _record_attempt(run_dir, **start_rec)
    try:
        result = _run(cfg, run_dir, device, info, env, store, start, valset, train_paths, code_bytes)
    except BaseException as e:
        if info.is_main:
            _record_attempt(run_dir, event="end", outcome=f"error: {type(e).__name__}: {e}"[:500])
        raise
    if info.is_main:
        _record_attempt(run_dir, event="end", outcome="trained")
    return result


def _run(cfg, run_dir, device, info, env, store, start, valset, train_paths, code_bytes) -> dict:
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    ctx = _open_run(cfg, run_dir, device, info, env, valset)
    trainer = phases.build_trainer(ctx, train_paths, store)
    if start is not None:
        trainer.resume(*start)
    result = phases.train(ctx, trainer)
    hessians = phases.calibrate(ctx, trainer.raw_model, trainer.loader, result)
    pre = phases.evaluate(ctx, trainer.raw_model, "prequant_eval_s", recipe=False)  # eager: no recompiles
    ctx.logger.log("prequant", val_loss=pre["val_loss"], val_bpb=pre["val_bpb"],
                   eval_s=ctx.phases["prequant_eval_s"])
    result.update(val_loss_prequant=pre["val_loss"], val_bpb_prequant=pre["val_bpb"],
                  params=trainer.raw_model.num_params())
    if info.is_main:
        code = budget.code_bytes() if code_bytes is None else int(code_bytes)
        path = run_dir / ARTIFACT_NAME
        sizes = phases.ship(ctx, trainer, hessians, code, path, store, result)
        result.update(artifact=str(path), artifact_bytes=sizes["model_bytes"],
                      code_bytes=sizes["code_bytes"], total_bytes=sizes["total_bytes"],
                      fits_budget=sizes["fits"], phases=ctx.phases)
        write_json(run_dir / "result.json", {"name": cfg.name, **result})
    dist.barrier()
    ctx.logger.close()
    return result


def _open_run(cfg, run_dir, device, info, env, valset) -> RunContext:
    """Provenance files (first start only) and the logger."""
    if info.is_main:
        for name, obj in (("config.json", cfg.to_dict()), ("env.json", env)):
            if not (run_dir / name).exists():  # provenance of the first start is never overwritten
                write_json(run_dir / name, obj)
    logger = Logger(run_dir, enabled=info.is_main)
    logger.log("run", name=cfg.name, code_sha256=env["code_sha256"][:16], torch=env["torch"],
               device=str(device), world_size=info.world_size)
    logger.text("config " + json.dumps(cfg.to_dict(), sort_keys=True), console=False)
    return RunContext(cfg, run_dir, device, info, logger, valset, env)


def evaluate_artifact(artifact: Path, val: str, tokenizer: str, device_kind: str = "auto",
                      batch_tokens: int = 0, max_tokens: int | None = None) -> dict:
    """Rebuild the model from the artifact alone and score it with its embedded recipe (cfg.eval);
    distributed when under torchrun. A non-finite score raises DegenerateModelError."""
    device = resolve_device(device_kind)
    dist.init(device.type)
    t0 = time.perf_counter()
    model, cfg = model_from_artifact(artifact, device)
    decompress_s = time.perf_counter() - t0
    valset = load_val(val, tokenizer, cfg.model.vocab_size)
    res = phases.score(model, valset, cfg, device, recipe=True, max_tokens=max_tokens,
                       batch_tokens=batch_tokens, what=f"{artifact}: evaluation")
    res["artifact_bytes"] = Path(artifact).stat().st_size
    res["decompress_seconds"] = round(decompress_s, 3)
    return res
