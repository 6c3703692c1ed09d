"""`loopgolf evaluate`: every evaluation of one artifact, each timed and checked for legality.

The model is rebuilt from the artifact file alone (its embedded config and weights). Phases:
plain (eval/bpb.py), sliding window, score-first TTT (sgd or lora, on a fresh copy of the
artifact's weights) and the normalized n-gram mixture. Each phase gets its own timer, compared with
the challenge's 600 s evaluation budget, and its event log is replayed by lab/legality.py
(score-first, every target once); predictive distributions are checked for normalization at
sampled positions, and the tokenizer's byte identity is checked on decoded validation documents.
Distributed under torchrun: each rank writes its event log, rank 0 merges and checks them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from loopgolf import dist
from loopgolf.data.tokenizer import load_tokenizer
from loopgolf.data.valset import load_val_set
from loopgolf.eval.bpb import usable_tokens
from loopgolf.eval.events import EventLog
from loopgolf.eval.mixture import evaluate_mixture
from loopgolf.eval.sliding import evaluate_plain, evaluate_sliding, new_log
from loopgolf.eval.ttt import ttt_lora, ttt_sgd
from loopgolf.lab import legality
from loopgolf.pipeline import model_from_artifact, resolve_device, write_json

EVAL_BUDGET_S = 600.0


def _check_logs(log: EventLog, events_dir: Path) -> dict | None:
    """Write this rank's log; on rank 0 read every rank's and replay them (None elsewhere)."""
    info = dist.info()
    log.write(events_dir / f"{log.phase}.rank{info.rank}.json")
    dist.barrier()
    if not info.is_main:
        return None
    logs = [EventLog.read(events_dir / f"{log.phase}.rank{r}.json") for r in range(info.world_size)]
    return legality.check_events(logs)


def evaluate_suite(artifact: Path, val: str, tokenizer: str, device_kind: str = "auto",
                   context: int = 0, stride: int = 64, ttt: str = "", mixture: bool = False,
                   batch_seqs: int = 32, max_tokens: int | None = None, events_dir: Path | None = None,
                   ttt_lr: float | None = None, ttt_epochs: int = 3, ttt_chunk: int = 32_768,
                   sample_positions: int = 32) -> dict:
    device = resolve_device(device_kind)
    dist.init(device.type)
    t0 = time.perf_counter()
    model, cfg = model_from_artifact(artifact, device)
    model.eval()
    phases: dict[str, dict] = {"load": {"seconds": time.perf_counter() - t0}}
    sp = load_tokenizer(tokenizer)
    vs = load_val_set(val, tokenizer, cfg.model.vocab_size)
    tokens = vs.tokens
    context = context or cfg.data.seq_len
    max_tok = cfg.eval.max_tokens if max_tokens is None else max_tokens
    n = usable_tokens(len(tokens), context, max_tok)
    tmp = None
    if events_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="loopgolf-events-")
        events_dir = Path(dist.broadcast_object(tmp.name))
    events_dir.mkdir(parents=True, exist_ok=True)
    checks: dict[str, dict] = {}

    phases["plain"] = evaluate_plain(model, vs, cfg.data.seq_len, batch_seqs, device, max_tok)
    log = new_log("sliding", n)
    phases["sliding"] = evaluate_sliding(model, vs, context, stride, batch_seqs, device,
                                         max_tok, log=log)
    checks["sliding_events"] = _check_logs(log, events_dir)
    positions = np.linspace(1, n - 1, min(sample_positions, n - 1)).astype(int)
    checks["sliding_normalized"] = legality.check_normalized(
        legality.network_distribution(model, tokens, context, device), positions, cfg.model.vocab_size)
    if mixture:
        log = new_log("mixture", n)
        res = evaluate_mixture(model, vs, context, stride, batch_seqs, device,
                               max_tokens=max_tok, log=log)
        phases["mixture"] = res
        checks["mixture_events"] = _check_logs(log, events_dir)
    if ttt:
        fresh = model_from_artifact(artifact, device)[0].eval()  # TTT adapts weights in place: a fresh copy
        log = new_log(f"ttt_{ttt}", n)
        if ttt == "sgd":
            phases["ttt_sgd"] = ttt_sgd(fresh, vs, context, stride, device, ttt_chunk,
                                        lr=0.005 if ttt_lr is None else ttt_lr, epochs=ttt_epochs,
                                        batch_seqs=batch_seqs, max_tokens=max_tok, log=log)
        elif ttt == "lora":
            phases["ttt_lora"] = ttt_lora(fresh, vs, device, context=context,
                                          lr=1e-4 if ttt_lr is None else ttt_lr, max_tokens=max_tok,
                                          log=log)
        else:
            raise ValueError(f"--ttt {ttt!r}: choose sgd or lora")
        checks[f"ttt_{ttt}_events"] = _check_logs(log, events_dir)
        del fresh
    if dist.info().is_main:
        docs = legality.docs_from_tokens(tokens[:n], sp, limit=200)
        checks["tokenizer_bytes"] = legality.check_tokenizer_bytes(sp, docs)
    for name, res in phases.items():
        res["seconds"] = round(res.pop("eval_seconds", res.get("seconds", 0.0)), 3)
        res["within_eval_budget"] = res["seconds"] <= EVAL_BUDGET_S
    report = {"artifact": str(artifact), "artifact_bytes": Path(artifact).stat().st_size,
              "config_name": cfg.name, "context": context, "stride": stride, "n_tokens": n,
              "world_size": dist.info().world_size, "device": str(device),
              "eval_budget_s": EVAL_BUDGET_S, "phases": phases,
              "legality": legality.summarize({k: v for k, v in checks.items() if v is not None})}
    dist.barrier()
    if tmp is not None:
        tmp.cleanup()
    return report


def format_report(report: dict) -> str:
    lines = [f"evaluate {report['artifact']} ({report['artifact_bytes']:,} bytes, context "
             f"{report['context']}, stride {report['stride']}, {report['n_tokens']:,} tokens)"]
    for name, r in report["phases"].items():
        score = f"val_loss:{r['val_loss']:.6f} val_bpb:{r['val_bpb']:.6f} " if "val_bpb" in r else ""
        lines.append(f"  {name:9s} {score}seconds:{r['seconds']:.1f}"
                     + ("" if r["within_eval_budget"] else " OVER the 600 s eval budget"))
    leg = report["legality"]
    lines.append("  legality: " + ("all checks passed" if leg["ok"] else f"FAILED {', '.join(leg['failed'])}"))
    for name in leg["failed"]:
        lines += [f"    {name}: {p}" for p in leg["checks"][name]["problems"]]
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    report = evaluate_suite(Path(args.artifact), args.val, args.tokenizer, args.device, args.context,
                            args.sliding_stride, args.ttt or "", args.mixture, args.batch_seqs,
                            args.max_tokens, Path(args.events_dir) if args.events_dir else None,
                            args.ttt_lr, args.ttt_epochs, args.ttt_chunk)
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
    p.add_argument("--ttt-lr", type=float, default=None, help="default 0.005 (sgd) / 1e-4 (lora)")
    p.add_argument("--ttt-epochs", type=int, default=3)
    p.add_argument("--ttt-chunk", type=int, default=32_768, help="sgd chunk size in tokens")
    p.add_argument("--mixture", action="store_true", help="also score the normalized n-gram mixture")
    p.add_argument("--batch-seqs", type=int, default=32, help="windows per forward on one rank")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--events-dir", help="keep the per-rank event logs here")
    p.add_argument("--json", help="write the report here")
    p.set_defaults(fn=cmd_evaluate)
