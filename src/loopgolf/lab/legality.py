"""Legality checker: replays evaluation event logs and tests the challenge's validity conditions.

The checks (users.md 1.1-1.2, techniques.md 4d-4f; issue #1017 C1-C3):
  * check_events: no target is scored after an update that read it (score-first), and every target
    1..n-1 is scored exactly once (no double scoring, no gaps), replayed from eval/events.py logs;
  * check_normalized: the predictive distribution sums to 1 over the vocabulary at sampled positions
    and the committed loss is -log of its value at the target (catches the hedge mixer's "entropy"
    expert and hashed n-gram caches that sum to ~277, PR #886);
  * check_overlap: no validation document also in training (SHA-256 of texts, data/corpus.py);
  * check_tokenizer_bytes: the byte tables count exactly the decoded UTF-8 bytes, and a standalone
    "\u2581" exists (data/tokenizer.check_tokenizer, challenge issue #897).
Each returns {"ok": bool, "problems": [str, ...], ...}; `summarize` folds several into one verdict.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from loopgolf.data.corpus import overlap
from loopgolf.data.tokenizer import BOS_ID, check_tokenizer
from loopgolf.eval.events import EventLog, merge_logs

_NEVER = np.iinfo(np.int64).max


def _examples(mask: np.ndarray, offset: int, k: int = 5) -> str:
    idx = np.flatnonzero(mask) + offset
    return ", ".join(map(str, idx[:k])) + (" ..." if len(idx) > k else "")


def check_events(logs: EventLog | list[EventLog]) -> dict:
    """Replay one phase's logs (one per rank, or one merged) for score-first order and coverage."""
    logs = [logs] if isinstance(logs, EventLog) else list(logs)
    n, first = logs[0].n_tokens, logs[0].first_target
    problems: list[str] = []
    diff = np.zeros(n + 1, dtype=np.int64)
    for lg in logs:
        for e in lg.events:
            if e["kind"] == "score":
                for lo, hi in e["ranges"]:
                    if lo < first or hi > n:
                        problems.append(f"scored positions [{lo}, {hi}) outside the targets [{first}, {n})")
                    diff[max(lo, 0)] += 1
                    diff[min(hi, n)] -= 1
    count = np.cumsum(diff)[:n]
    never, twice = count[first:] == 0, count[first:] > 1
    if never.any():
        problems.append(f"{int(never.sum())} target(s) never scored (positions {_examples(never, first)})")
    if twice.any():
        problems.append(f"{int(twice.sum())} target(s) scored more than once (positions "
                        f"{_examples(twice, first)})")
    groups = [merge_logs(logs)] if all(lg.lockstep for lg in logs) else logs
    late = 0
    example = ""
    for g in groups:
        seen = np.full(n, _NEVER, dtype=np.int64)  # version of the first update that read each token
        for e in g.events:
            if e["kind"] == "update":
                for lo, hi in e["ranges"]:
                    np.minimum(seen[lo:hi], e["version"], out=seen[lo:hi])
        for e in g.events:
            if e["kind"] != "score":
                continue
            for lo, hi in e["ranges"]:
                bad = seen[lo:hi] < e["version"]
                if bad.any():
                    late += int(bad.sum())
                    j = lo + int(np.flatnonzero(bad)[0])
                    example = example or (f"position {j} scored at version {e['version']} after "
                                          f"update {int(seen[j])} read it (rank {e['rank']})")
    if late:
        problems.append(f"{late} target(s) scored after an update that saw them (train-then-score): "
                        f"{example}")
    return {"ok": not problems, "problems": problems, "phase": logs[0].phase,
            "targets": n - first, "scored": int(count[first:].sum()), "updates": max(lg.version for lg in logs),
            "score_first": late == 0}


def check_normalized(dist_fn: Callable[[int], object], positions: Iterable[int], vocab: int,
                     tol: float = 1e-4) -> dict:
    """dist_fn(p) -> distribution (V,) or (distribution, target, committed nats) at position p."""
    problems: list[str] = []
    sums: list[float] = []
    for p in positions:
        out = dist_fn(int(p))
        target = nats = None
        if isinstance(out, tuple):
            out, target, nats = out
        d = torch.as_tensor(out, dtype=torch.float64).flatten()
        if d.numel() != vocab:
            problems.append(f"position {p}: distribution has {d.numel()} entries, vocabulary has {vocab}")
            continue
        total = float(d.sum())
        sums.append(total)
        if float(d.min()) < 0 or not np.isfinite(total):
            problems.append(f"position {p}: negative or non-finite probabilities")
        if abs(total - 1.0) > tol:
            problems.append(f"position {p}: distribution sums to {total:.6g}, not 1 (unnormalized)")
        if target is not None and abs(-np.log(max(float(d[target]), 1e-300)) - nats) > max(tol, 1e-4 * abs(nats)):
            problems.append(f"position {p}: committed loss {nats:.6g} != -log p(target) "
                            f"{-np.log(max(float(d[target]), 1e-300)):.6g}")
    return {"ok": not problems, "problems": problems, "checked": len(sums),
            "max_abs_sum_error": max((abs(s - 1) for s in sums), default=0.0)}


def network_distribution(model: torch.nn.Module, tokens: np.ndarray, context: int,
                         device: torch.device) -> Callable[[int], torch.Tensor]:
    """dist_fn for a plain network: softmax of the logits for position p given its prefix window."""
    @torch.no_grad()
    def fn(p: int) -> torch.Tensor:
        x = torch.from_numpy(tokens[max(0, p - context):p].astype(np.int64)).to(device)[None]
        return torch.softmax(model.logits(x)[0, -1].double(), -1).cpu()
    return fn


def check_overlap(train_docs: Iterable[str], val_docs: Iterable[str]) -> dict:
    k = overlap(train_docs, val_docs)
    problems = [f"{k} validation document(s) also appear in training (SHA-256 of the text); "
                "re-split with `loopgolf data tokenize`"] if k else []
    return {"ok": not problems, "problems": problems, "overlapping_docs": k}


def check_tokenizer_bytes(sp, texts: Iterable[str]) -> dict:
    texts = list(texts)
    problems = check_tokenizer(sp, texts)
    return {"ok": not problems, "problems": problems, "texts": len(texts)}


def docs_from_tokens(tokens: np.ndarray, sp, limit: int = 200) -> list[str]:
    """Decode up to `limit` BOS-delimited documents of a token stream back to text."""
    starts = np.flatnonzero(np.asarray(tokens) == BOS_ID)
    bounds = list(starts[:limit + 1]) + ([len(tokens)] if len(starts) <= limit else [])
    return [sp.decode(np.asarray(tokens[a + 1:b]).astype(int).tolist())
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a + 1]


def summarize(checks: dict[str, dict]) -> dict:
    """{"ok": all passed, "failed": [names], "checks": checks}."""
    failed = [k for k, v in checks.items() if not v["ok"]]
    return {"ok": not failed, "failed": failed, "checks": checks}
