"""The main job: train -> pre-quantization eval -> compress to an artifact; and artifact -> exact bpb.

`train_and_compress` runs on every rank (launched plainly or by torchrun) and writes, under the run
directory: config.json, env.json, train.log, metrics.jsonl, model.lgz (the artifact) and a partial
result. With quant.fit_target set, the artifact is fitted just under that many bytes (artifact + code;
compress/fit_gptq.py with quant.gptq, else compress/fit.py) and the config embedded in it names the
knobs chosen. `evaluate_artifact` rebuilds the model from the artifact file alone (its embedded
config and weights) and reports val_bpb; the CLI calls it in a fresh process.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from loopgolf import dist
from loopgolf.compress import budget
from loopgolf.compress.artifact import (
    ArtifactError,
    inspect_artifact,
    read_artifact,
    write_artifact,
    write_bytes_atomic,
)
from loopgolf.compress.budget import budget_report, format_budget
from loopgolf.compress.fit import FitError, FitResult, fit_to_budget
from loopgolf.compress.fit_gptq import fit_gptq
from loopgolf.compress.gptq import collect_hessians, gptq_quantize_state, sample_calibration
from loopgolf.config import ConfigError, QuantConfig, RunConfig
from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.data.luts import build_byte_luts
from loopgolf.data.shards import check_vocab, list_shards, load_shard
from loopgolf.data.tokenizer import load_tokenizer
from loopgolf.eval.bpb import evaluate_bpb
from loopgolf.metrics import Logger, provenance
from loopgolf.model.blocks import attention_backend
from loopgolf.model.gpt import GPT
from loopgolf.train.loop import Trainer

ARTIFACT_NAME = "model.lgz"
CHECKPOINT_NAME = "checkpoint.pt"


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available; use --set train.device=cpu")
        return torch.device("cuda", dist.local_rank_hint())
    return torch.device("cpu")


def write_json(path: Path, obj) -> None:
    """Atomic JSON write: a crash never leaves a half-written result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def load_val_tokens(pattern: str) -> np.ndarray:
    parts = [np.asarray(load_shard(p)) for p in list_shards(pattern)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _byte_tables(tokenizer_path: str, vocab_size: int, device: torch.device):
    sp = load_tokenizer(tokenizer_path)
    return build_byte_luts(sp, vocab_size).to_torch(device), sp


def train_and_compress(cfg: RunConfig, run_dir: Path, resume: bool = False,
                       code_bytes: int | None = None) -> dict:
    """Train, evaluate before quantization, write the artifact and result.json. `code_bytes`
    counts the code that ships (e.g. the packed single-file export) in the budget report and the
    fit target; None counts compress.budget.code_bytes() (the core sources, or the exported file
    when running from one)."""
    cfg.validate()
    device = resolve_device(cfg.train.device)
    info = dist.init(device.type)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    logger = Logger(run_dir, enabled=info.is_main)
    env = provenance()
    if info.is_main:
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "env.json", env)
    logger.log("run", name=cfg.name, code_sha256=env["code_sha256"][:16], torch=env["torch"],
               device=str(device), world_size=info.world_size)
    logger.text("config " + json.dumps(cfg.to_dict(), sort_keys=True))

    luts, sp = _byte_tables(cfg.data.tokenizer, cfg.model.vocab_size, device)
    train_paths = list_shards(cfg.data.train)
    # ids must come from this tokenizer (whose vocab fits the model's, checked by the byte tables)
    check_vocab(train_paths, sp.get_piece_size())
    check_vocab(list_shards(cfg.data.val), sp.get_piece_size())
    val_tokens = load_val_tokens(cfg.data.val)

    model = GPT(cfg.model).to(device)
    logger.log("attention", backend=attention_backend(device.type))
    logger.log("model", params=model.num_params(), plan=" ".join(map(str, model.plan.schedule)),
               blocks=model.plan.n_blocks, virtual_layers=model.plan.n_virtual)
    loader = BatchLoader(TokenStream(train_paths), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, info.rank, info.world_size, device)

    def val_fn(m: torch.nn.Module, max_tokens: int) -> dict:
        return evaluate_bpb(m, val_tokens, luts, cfg.data.seq_len, cfg.train.micro_batch_seqs, device,
                            max_tokens=max_tokens)

    ckpt = run_dir / CHECKPOINT_NAME
    # GPTQ calibration from training data must finish inside the training budget (techniques.md
    # 4e compliance note), so the loop gets the budget minus a reserve and calibration uses the rest.
    train_cfg = cfg
    reserve = cfg.quant.gptq_reserve_s if (cfg.quant.gptq and cfg.quant.gptq_calib == "train") else 0.0
    if reserve and cfg.train.budget_s > 0:
        train_cfg = copy.deepcopy(cfg)
        train_cfg.train.budget_s = max(1.0, cfg.train.budget_s - reserve)
    trainer = Trainer(train_cfg, model, loader, device, logger,
                      checkpoint_path=ckpt if cfg.train.checkpoint_every or resume else None,
                      val_fn=val_fn)
    if resume:
        trainer.resume(ckpt)
    warm_s = trainer.warmup()
    if warm_s:
        logger.log("compile_warmup", seconds=round(warm_s, 1), steps=cfg.train.warmup_steps)
    result = trainer.run()
    logger.log("train_done", **result)
    if cfg.train.checkpoint_every:
        trainer.save()

    phases = {"compile_warmup_s": round(warm_s, 2), "train_loop_s": result["train_seconds"]}
    hessians = None
    if cfg.quant.gptq:
        hessians, calib_s, calib_batches = _calibrate(cfg, model, loader, device)
        phases["calibration_s"] = round(calib_s, 2)
        if cfg.quant.gptq_calib == "train":
            phases["train_plus_calibration_s"] = round(result["train_seconds"] + calib_s, 2)
        logger.log("calibration", source=cfg.quant.gptq_calib, seconds=round(calib_s, 2),
                   batches=calib_batches, hessians=len(hessians), reserve_s=reserve)
        result["calibration_batches"] = calib_batches
    pre = val_fn(model, cfg.eval.max_tokens)  # eager model: a ragged last batch would recompile
    phases["prequant_eval_s"] = round(pre["eval_seconds"], 2)
    logger.log("prequant", val_loss=pre["val_loss"], val_bpb=pre["val_bpb"],
               eval_s=round(pre["eval_seconds"], 2))
    result.update(val_loss_prequant=pre["val_loss"], val_bpb_prequant=pre["val_bpb"],
                  params=model.num_params())
    if info.is_main:
        shipped = copy.deepcopy(cfg)
        shipped.model.mtp_heads = 0  # auxiliary heads are training-only: they never ship

        def meta_for(qcfg: QuantConfig) -> dict:  # the embedded config names the quant knobs used
            conf = shipped.to_dict()
            conf["quant"] = dataclasses.asdict(qcfg)
            return {"config": conf, "code_sha256": env["code_sha256"], "loopgolf": env["loopgolf"]}

        state = model.shipped_state()
        code = budget.code_bytes() if code_bytes is None else int(code_bytes)
        path = run_dir / ARTIFACT_NAME
        report = None
        if cfg.quant.fit_target:
            t0 = time.perf_counter()
            try:
                fit = _fit(state, hessians, cfg.quant, code, meta_for, device)
            except FitError as e:  # keep the trained model: write the artifact as configured
                logger.log("fit_failed", target=cfg.quant.fit_target, error=str(e))
                result["fit"] = {"target_bytes": cfg.quant.fit_target, "error": str(e)}
            else:
                phases["fit_s"] = round(time.perf_counter() - t0, 2)
                write_bytes_atomic(path, fit.blob)
                report = inspect_artifact(fit.blob, str(path))
                result["fit"] = _fit_summary(fit)
                logger.log("fit", **{k: v for k, v in result["fit"].items() if k != "trials"},
                           n_trials=len(fit.trials), seconds=phases["fit_s"])
        if report is None:
            t0 = time.perf_counter()
            parts = gptq_quantize_state(state, hessians, cfg.quant, device=device) if hessians else None
            if parts is not None:
                phases["gptq_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            report = write_artifact(path, state, meta_for(cfg.quant), cfg.quant, precomputed=parts)
            phases["compress_s"] = round(time.perf_counter() - t0, 2)
        sizes = budget_report(report.total_bytes, code)
        logger.text(report.format_table())
        logger.log("artifact", path=str(path), **sizes)
        logger.text(format_budget(sizes))
        result.update(artifact=str(path), artifact_bytes=sizes["model_bytes"],
                      code_bytes=sizes["code_bytes"], total_bytes=sizes["total_bytes"],
                      fits_budget=sizes["fits"], phases=phases)
        write_json(run_dir / "result.json", {"name": cfg.name, **result})
    dist.barrier()
    logger.close()
    return result


def _fit(state: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor] | None,
         qcfg: QuantConfig, code: int, meta_for, device: torch.device) -> FitResult:
    """The artifact fitted under quant.fit_target: GPTQ re-run per SDClip k trial when quant.gptq,
    else the round-to-nearest fitter (k, pruning, then bit width)."""
    if qcfg.gptq:
        return fit_gptq(state, hessians or {}, qcfg, qcfg.fit_target, code, meta_for, device)
    return fit_to_budget(state, qcfg, qcfg.fit_target, code, meta_for)


def _fit_summary(fit: FitResult) -> dict:
    q = fit.qcfg
    return {"target_bytes": fit.target_bytes, "total_bytes": fit.total_bytes, "scheme": q.scheme,
            "clip": q.clip, "sdclip_k": q.sdclip_k, "prune_frac": q.prune_frac, "trials": fit.trials}


def _calibrate(cfg: RunConfig, model: torch.nn.Module, loader: BatchLoader, device: torch.device):
    """Hessians for GPTQ from the next training batches (inside the budget) or from the model's own
    samples (no data access; after training), summed over ranks."""
    t0 = time.perf_counter()
    q = cfg.quant
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if q.gptq_calib == "train":
        batches = []
        while len(batches) < q.gptq_calib_batches:
            batches += [x for x, _ in loader.next_step()]
        batches = batches[: q.gptq_calib_batches]
    else:
        with amp:
            batches = sample_calibration(model, q.gptq_calib_batches, cfg.data.seq_len, q.gptq_calib_temp)
    if q.gptq_calib == "train" and q.gptq_reserve_s > 0 and cfg.train.budget_s > 0:
        # calibration on training data counts against the training budget: stop at the reserve
        batches = _UntilDeadline(batches, t0 + q.gptq_reserve_s, device)
    with amp:
        hess = collect_hessians(model, batches, device)
    if dist.info().enabled:
        for name, h in hess.items():
            hess[name] = dist.all_reduce_sum(h.to(device)).cpu()  # NCCL reduces device tensors
    if device.type == "cuda":
        torch.cuda.synchronize()
    used = batches.used if isinstance(batches, _UntilDeadline) else len(batches)
    return hess, time.perf_counter() - t0, used


class _UntilDeadline:
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


def model_from_artifact(artifact: Path, device: torch.device) -> tuple[GPT, RunConfig]:
    """The shipped model, rebuilt from the artifact file alone (its embedded config and weights)."""
    state, meta = read_artifact(artifact)
    cfg = RunConfig.from_dict(meta["config"]).validate()
    model = GPT(cfg.model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{artifact}: artifact tensors do not match its config (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); re-run `loopgolf train`")
    return model.to(device), cfg


def evaluate_artifact(artifact: Path, val: str, tokenizer: str, device_kind: str = "auto",
                      batch_tokens: int = 0, max_tokens: int | None = None) -> dict:
    """Rebuild the model from the artifact alone and score it; distributed when under torchrun."""
    device = resolve_device(device_kind)
    dist.init(device.type)
    t0 = time.perf_counter()
    model, cfg = model_from_artifact(artifact, device)
    decompress_s = time.perf_counter() - t0
    luts, sp = _byte_tables(tokenizer, cfg.model.vocab_size, device)
    check_vocab(list_shards(val), sp.get_piece_size())
    tokens = load_val_tokens(val)
    batch_seqs = max(1, (batch_tokens or cfg.eval.batch_tokens) // cfg.data.seq_len
                     // dist.info().world_size)
    res = evaluate_bpb(model, tokens, luts, cfg.data.seq_len, min(batch_seqs, 64), device,
                       max_tokens=cfg.eval.max_tokens if max_tokens is None else max_tokens)
    res["artifact_bytes"] = Path(artifact).stat().st_size
    res["decompress_seconds"] = round(decompress_s, 3)
    return res
