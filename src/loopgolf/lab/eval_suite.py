"""`loopgolf evaluate`: every evaluation of one artifact, each timed and checked for legality.

The model is rebuilt from the artifact file alone (its embedded config and weights) and the
validation set is loaded through data/valset.py (tokenizer checked against the shards' manifest,
the case-transform byte sidecar honoured). Phases, each one eval/recipe.evaluate call with the
artifact's recipe (EvalConfig) plus the command line's overrides: plain, sliding window, the
normalized n-gram mixture and score-first TTT (sgd or lora, on a copy of the weights). Each phase
is timed against the challenge's 600 s evaluation budget; its event log is replayed against the
data's stream (lab/legality.check_events), and, unless --skip-behaviour, the evaluator is probed on
a slice of the data (lab/legality.check_behaviour: every committed distribution normalized and
consistent with its loss, every target once, bit-identical under perturbation of later tokens).
The tokenizer's byte identity is checked on decoded validation documents. Under torchrun each rank
writes its event log, rank 0 reads and checks them all.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loopgolf import dist
from loopgolf.data.tokenizer import BOS_ID, load_tokenizer
from loopgolf.data.valset import load_val_set
from loopgolf.eval.bpb import NonFiniteScoreError, usable_tokens
from loopgolf.eval.events import EventLog
from loopgolf.eval.recipe import evaluate
from loopgolf.lab import legality
from loopgolf.pipeline import model_from_artifact, resolve_device, write_json

EVAL_BUDGET_S = 600.0


def _check_logs(log: EventLog, events_dir: Path, n: int) -> dict | None:
    """Write this rank's log; on rank 0 read every rank's and replay them (None elsewhere)."""
    info = dist.info()
    log.write(events_dir / f"{log.phase}.rank{info.rank}.json")
    dist.barrier()
    if not info.is_main:
        return None
    logs = [EventLog.read(events_dir / f"{log.phase}.rank{r}.json") for r in range(info.world_size)]
    return legality.check_events(logs, n_tokens=n)


def phase_recipes(base, context: int, stride: int, ttt: str, mixture: bool, batch_seqs: int,
                  ttt_lr: float | None, ttt_epochs: int, ttt_chunk: int) -> dict:
    """{phase name: EvalConfig} from the artifact's recipe and the command line's overrides."""
    common = dict(stride=stride, batch_tokens=batch_seqs * context, context=context)
    out = {"plain": dataclasses.replace(base, method="plain", context=0, batch_tokens=common["batch_tokens"]),
           "sliding": dataclasses.replace(base, method="sliding", **common)}
    if mixture:
        out["mixture"] = dataclasses.replace(base, method="mixture", **common)
    if ttt == "sgd":
        out["ttt_sgd"] = dataclasses.replace(base, method="ttt_sgd", sgd_epochs=ttt_epochs,
                                             sgd_chunk_tokens=ttt_chunk,
                                             sgd_lr=base.sgd_lr if ttt_lr is None else ttt_lr, **common)
    elif ttt == "lora":
        out["ttt_lora"] = dataclasses.replace(base, method="ttt_lora",
                                              lora_lr=base.lora_lr if ttt_lr is None else ttt_lr, **common)
    elif ttt:
        raise ValueError(f"--ttt {ttt!r}: choose sgd or lora")
    if base.method not in out:  # the artifact's own recipe, exactly as stored
        out[base.method] = base
    return out


def behaviour_slice(vs, ecfg, ctx: int, n_phase: int, check_tokens: int) -> int:
    """Tokens of the behavioural slice: 8 windows, and enough for the recipe's updates to happen
    (two TTT-SGD chunks; the documents of lora_phases + 1 LoRA batches, or with a phase prefix
    the batches up to the prefix's last document and one more)."""
    want = check_tokens or 8 * ctx
    if not check_tokens and ecfg.method == "ttt_sgd":
        want = max(want, 2 * ecfg.sgd_chunk_tokens)
    if not check_tokens and ecfg.method == "ttt_lora" and ecfg.lora_phases:
        bos = np.flatnonzero(vs.tokens[:n_phase] == BOS_ID)
        k = (ecfg.lora_phases + 1) * ecfg.lora_docs_per_batch
        if ecfg.lora_phase_prefix_docs:
            k = (-(-ecfg.lora_phase_prefix_docs // ecfg.lora_docs_per_batch) + 1) * ecfg.lora_docs_per_batch
        want = max(want, int(bos[k]) if len(bos) > k else n_phase)
    return min(want, n_phase - 1) + 1


def evaluate_suite(artifact: Path, val: str, tokenizer: str, device_kind: str = "auto",
                   context: int = 0, stride: int = 64, ttt: str = "", mixture: bool = False,
                   batch_seqs: int = 32, max_tokens: int | None = None, events_dir: Path | None = None,
                   ttt_lr: float | None = None, ttt_epochs: int = 3, ttt_chunk: int = 32_768,
                   behaviour: bool = True, check_tokens: int = 0, perturbations: int = 4,
                   seed: int = 0) -> dict:
    device = resolve_device(device_kind)
    dist.init(device.type)
    t0 = time.perf_counter()
    model, cfg = model_from_artifact(artifact, device)
    model.eval()
    phases: dict[str, dict] = {"load": {"seconds": time.perf_counter() - t0}}
    vs = load_val_set(val, tokenizer, cfg.model.vocab_size)
    seq_len = cfg.data.seq_len
    context = context or seq_len
    max_tok = cfg.eval.max_tokens if max_tokens is None else max_tokens
    n = usable_tokens(len(vs), context, max_tok)
    recipes = phase_recipes(cfg.eval, context, stride, ttt, mixture, batch_seqs, ttt_lr, ttt_epochs,
                            ttt_chunk)
    tmp = None
    if events_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="loopgolf-events-")
        events_dir = Path(dist.broadcast_object(tmp.name))
    events_dir.mkdir(parents=True, exist_ok=True)
    checks: dict[str, dict] = {}
    slice_n = 0
    for name, ecfg in recipes.items():
        ctx = ecfg.context or seq_len
        n_phase = usable_tokens(len(vs), ctx, max_tok)
        log = EventLog(phase=name, n_tokens=n_phase, rank=dist.info().rank)
        phases[name] = evaluate(model, vs, ecfg, device, seq_len, max_tokens=max_tok, log=log)
        checks[f"{name}_events"] = _check_logs(log, events_dir, n_phase)
        if behaviour:
            sub = vs.head(behaviour_slice(vs, ecfg, ctx, n_phase, check_tokens))
            slice_n = usable_tokens(len(sub), ctx)

            def run(v, lg, ecfg=ecfg):
                return evaluate(model, v, ecfg, device, seq_len, max_tokens=0, log=lg)
            checks[f"{name}_behaviour"] = legality.check_behaviour(
                run, sub, slice_n, seed=seed, perturbations=perturbations, device=device, phase=name,
                vocab=cfg.model.vocab_size)
    if dist.info().is_main:
        sp = load_tokenizer(tokenizer)
        docs = legality.docs_from_tokens(vs.tokens[:n], sp, limit=200)
        checks["tokenizer_bytes"] = legality.check_tokenizer_bytes(sp, docs)
    for res in phases.values():
        res["seconds"] = round(res.pop("eval_seconds", res.get("seconds", 0.0)), 3)
        res["within_eval_budget"] = res["seconds"] <= EVAL_BUDGET_S
    leg = legality.summarize({k: v for k, v in checks.items() if v is not None})
    leg["behavioural"] = {"ran": behaviour, "slice_tokens": slice_n if behaviour else 0,
                          "perturbations": perturbations if behaviour else 0, "seed": seed}
    report = {"artifact": str(artifact), "artifact_bytes": Path(artifact).stat().st_size,
              "config_name": cfg.name, "context": context, "stride": stride, "n_tokens": n,
              "bytes_source": vs.bytes_source, "world_size": dist.info().world_size,
              "device": str(device), "eval_budget_s": EVAL_BUDGET_S, "phases": phases,
              "recipes": {k: dataclasses.asdict(v) for k, v in recipes.items()}, "legality": leg}
    dist.barrier()
    if tmp is not None:
        tmp.cleanup()
    return report


def format_report(report: dict) -> str:
    lines = [f"evaluate {report['artifact']} ({report['artifact_bytes']:,} bytes, context "
             f"{report['context']}, stride {report['stride']}, {report['n_tokens']:,} tokens, bytes "
             f"from the {report.get('bytes_source', 'tables')})"]
    for name, r in report["phases"].items():
        score = f"val_loss:{r['val_loss']:.6f} val_bpb:{r['val_bpb']:.6f} " if "val_bpb" in r else ""
        lines.append(f"  {name:9s} {score}seconds:{r['seconds']:.1f}"
                     + ("" if r["within_eval_budget"] else " OVER the 600 s eval budget"))
    leg = report["legality"]
    b = leg.get("behavioural", {})
    ran = (f" (behavioural check on {b['slice_tokens']:,} tokens, {b['perturbations']} perturbations)"
           if b.get("ran") else " (behavioural check SKIPPED: logs replayed only)")
    lines.append("  legality: " + ("all checks passed" if leg["ok"] else f"FAILED {', '.join(leg['failed'])}")
                 + ran)
    for name in leg["failed"]:
        lines += [f"    {name}: {p}" for p in leg["checks"][name]["problems"]]
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        report = evaluate_suite(Path(args.artifact), args.val, args.tokenizer, args.device, args.context,
                                args.sliding_stride, args.ttt or "", args.mixture, args.batch_seqs,
                                args.max_tokens, Path(args.events_dir) if args.events_dir else None,
                                args.ttt_lr, args.ttt_epochs, args.ttt_chunk, not args.skip_behaviour,
                                args.check_tokens, args.perturbations)
    except NonFiniteScoreError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        dist.cleanup()
        return 2
    if dist.info().is_main:
        print(format_report(report), flush=True)
        if args.json:
            write_json(Path(args.json), report)
    dist.cleanup()
    return 0 if report["legality"]["ok"] else 1


def register(sub) -> None:
    """Add `loopgolf evaluate` to the CLI's subparsers."""
    p = sub.add_parser("evaluate", help="plain, sliding, score-first TTT and mixture evals of an "
                                        "artifact, timed and legality-checked")
    p.add_argument("artifact")
    p.add_argument("--val", required=True, help="glob of validation shards")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model for the byte tables")
    p.add_argument("--device", default="auto")
    p.add_argument("--context", type=int, default=0, help="sliding context (default: the artifact's seq_len)")
    p.add_argument("--sliding-stride", type=int, default=64)
    p.add_argument("--ttt", choices=("sgd", "lora"), help="score-first test-time training variant")
    p.add_argument("--ttt-lr", type=float, default=None, help="default: the artifact's recipe")
    p.add_argument("--ttt-epochs", type=int, default=3)
    p.add_argument("--ttt-chunk", type=int, default=32_768, help="sgd chunk size in tokens")
    p.add_argument("--mixture", action="store_true", help="also score the normalized n-gram mixture")
    p.add_argument("--batch-seqs", type=int, default=32, help="windows per batch across all ranks")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--events-dir", help="keep the per-rank event logs here")
    p.add_argument("--skip-behaviour", action="store_true",
                   help="replay the event logs only (no perturbation/consistency probe of the evaluators)")
    p.add_argument("--check-tokens", type=int, default=0,
                   help="tokens of the behavioural slice (default max(8 x context, 2 TTT chunks))")
    p.add_argument("--perturbations", type=int, default=4, help="re-runs with perturbed later tokens")
    p.add_argument("--json", help="write the report here")
    p.set_defaults(fn=cmd_evaluate)
