"""Legality checker: tests what an evaluator DOES, then replays what its event log says it did.

The challenge's validity conditions (users.md 1.1-1.2, techniques.md 4d-4f; issue #1017 C1-C3): the
distribution committed for target p depends only on tokens[:p] (and on tokens already scored), it
is a normalized distribution over the vocabulary, the loss is -log of its value at the target, and
every target is scored exactly once. Issue 16 showed a checker that trusts the evaluator's own log
passes a peeking forward(), an off-by-one TTT and crafted logs, so the core here is behavioural:

  * check_behaviour runs the evaluator with a Recorder attached (eval/bpb.commit_record hands it
    every committed distribution). At EVERY committed position it checks, in float64, that the
    distribution sums to 1 (tol 1e-6) and that the committed nats equal -log p(target), with the
    target read from the data; that every target 1..n-1 of the data is committed exactly once;
    and that the recorder's own sums reproduce the reported val_bpb. Then it replaces tokens[q:]
    (document boundaries kept) for sampled q, the first positions scored after updates and random
    ones drawn with the checker's seed, re-runs, and requires every committed distribution at
    positions <= q (and every committed loss at positions < q) to be bit-identical (within 10x
    the run-to-run noise of an evaluator that is not deterministic; the report says which).
  * check_events replays per-rank logs in the order events were appended (version stamps are not
    trusted): ranges must be well formed (lo < hi) inside the DATA's [first_target, n_tokens), which
    the caller passes; no score after an update that read the target (global updates are matched
    across ranks by their count, local ones affect their own rank); every target once.
Also: check_normalized (the same normalization test for any distribution function at chosen
positions), check_overlap (train/val documents by SHA-256) and check_tokenizer_bytes (byte tables
vs decoded UTF-8, challenge issue #897). Each returns {"ok", "problems", ...}; `summarize` folds them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.corpus import overlap
from loopgolf.data.tokenizer import BOS_ID, check_tokenizer
from loopgolf.data.valset import ValSet
from loopgolf.eval.events import EventLog

NORM_TOL = 1e-6  # |sum p - 1| in float64
NATS_TOL = 1e-5  # |nats + log p(target)| / (1 + nats): float32 cross-entropy vs float64 log-softmax
# Run-to-run noise above this cannot be told apart from a leak: such an evaluator is refused rather
# than compared within its noise (an evaluator could otherwise add jitter to hide what it peeks at).
MAX_NOISE = 1e-6


def _examples(idx: np.ndarray, k: int = 5) -> str:
    return ", ".join(map(str, idx[:k])) + (" ..." if len(idx) > k else "")


class Recorder:
    """Receives every committed distribution of one evaluator run over the first n tokens of vs."""

    def __init__(self, vs: ValSet, n: int, seed: int, device: torch.device | str = "cpu",
                 vocab: int | None = None):
        self.vs, self.n, self.seed, self.device, self.vocab = vs, n, seed, torch.device(device), vocab
        self.targets = torch.from_numpy(vs.tokens[:n].astype(np.int64)).to(self.device)
        self.counts = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.fingerprint = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.nats = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.bad = torch.zeros(4, dtype=torch.float64, device=self.device)  # range, norm, nats, width
        self.worst = torch.zeros(2, dtype=torch.float64, device=self.device)  # max norm / nats error
        self.first_bad: dict[str, int] = {}
        self.frontiers: list[int] = []  # first position committed after each update
        self._after_update = False
        self._weights: torch.Tensor | None = None

    def mark_update(self) -> None:
        self._after_update = True

    @torch.no_grad()
    def commit(self, pos: torch.Tensor, logp: torch.Tensor, nats: torch.Tensor) -> None:
        pos = pos.to(self.device).long().reshape(-1)
        logp = logp.to(self.device, torch.float64).reshape(len(pos), -1)
        nats = nats.to(self.device, torch.float64).reshape(-1)
        if self._after_update and len(pos):
            self.frontiers.append(int(pos.min()))
            self._after_update = False
        inside = (pos >= 1) & (pos < self.n)
        if not bool(inside.all()):
            self.bad[0] += float((~inside).sum())
            self.first_bad.setdefault("range", int(pos[~inside][0]))
        pos, logp, nats = pos[inside], logp[inside], nats[inside]
        if self.vocab is not None and logp.shape[1] != self.vocab:
            self.bad[3] += len(pos)
            self.first_bad.setdefault("width", logp.shape[1])
        if self._weights is None or len(self._weights) != logp.shape[1]:
            g = torch.Generator().manual_seed(self.seed)
            self._weights = torch.rand(logp.shape[1], generator=g, dtype=torch.float64).to(self.device)
        p = logp.exp()
        norm_err = (p.sum(1) - 1).abs()
        norm_err = torch.where(torch.isfinite(norm_err) & (p.min(1).values >= 0), norm_err, math.inf)
        nll = -logp.gather(1, self.targets[pos][:, None]).squeeze(1)
        nats_err = (nats - nll).abs() / (1 + nats.abs())
        nats_err = torch.where(torch.isfinite(nats_err), nats_err, math.inf)
        for i, (name, err, tol) in enumerate((("norm", norm_err, NORM_TOL), ("nats", nats_err, NATS_TOL))):
            over = err > tol
            if bool(over.any()):
                self.bad[1 + i] += float(over.sum())
                self.first_bad.setdefault(name, int(pos[over][0]))
            if len(err):
                self.worst[i] = torch.maximum(self.worst[i], err.max())
        self.counts.index_add_(0, pos, torch.ones_like(nats))
        self.fingerprint.index_copy_(0, pos, (p * self._weights).sum(1))
        self.nats.index_copy_(0, pos, nats)

    def reduce(self) -> None:
        """Sum the ranks' recorders (each position is committed on one rank)."""
        for t in (self.counts, self.fingerprint, self.nats, self.bad):
            dist.all_reduce_sum(t)
        dist.all_reduce_max(self.worst)

    def problems(self, result: dict, first_target: int = 1) -> list[str]:
        out = []
        bad = self.bad.tolist()
        if bad[0]:
            out.append(f"{int(bad[0])} commit(s) at positions outside the targets [1, {self.n}) "
                       f"(e.g. {self.first_bad.get('range')})")
        if bad[1]:
            out.append(f"{int(bad[1])} committed distribution(s) do not sum to 1 within {NORM_TOL:g} "
                       f"(unnormalized; worst error {float(self.worst[0]):.3g}, e.g. position "
                       f"{self.first_bad.get('norm', '?')} on rank 0)")
        if bad[2]:
            out.append(f"{int(bad[2])} committed loss(es) differ from -log p(target) of the committed "
                       f"distribution (worst relative error {float(self.worst[1]):.3g}, e.g. position "
                       f"{self.first_bad.get('nats', '?')} on rank 0): the score is not the distribution's")
        if bad[3]:
            out.append(f"{int(bad[3])} committed distribution(s) over {self.first_bad.get('width')} "
                       f"entries, not the vocabulary's {self.vocab}")
        counts = self.counts.cpu().numpy()
        out += _coverage_problems(counts, first_target, "of the data never committed", "committed")
        once = counts == 1
        n_bytes = float(self.vs.target_bytes[:self.n][once].sum())
        if n_bytes > 0 and "val_bpb" in result:
            bpb = float(self.nats.cpu().numpy()[once].sum()) / (math.log(2) * n_bytes)
            if not math.isclose(bpb, result["val_bpb"], rel_tol=1e-9):
                out.append(f"reported val_bpb {result['val_bpb']:.9g} != {bpb:.9g} from the committed "
                           "losses and the data's bytes")
        return out


def perturb(tokens: np.ndarray, q: int, rng: np.random.Generator, keep_bos: bool = True) -> np.ndarray:
    """tokens with every token at positions >= q replaced by another id of the stream (keep_bos:
    BOS tokens stay, so the document boundaries do not move; ids are then drawn among the others)."""
    out = np.array(tokens, copy=True)
    ids = np.unique(out[out != BOS_ID]) if keep_bos else np.unique(out)
    idx = np.flatnonzero(out[q:] != BOS_ID) + q if keep_bos else np.arange(q, len(out))
    if len(ids) > 1:
        shift = rng.integers(1, len(ids), len(idx))
        out[idx] = ids[(np.searchsorted(ids, out[idx]) + shift) % len(ids)]
    return out


RunFn = Callable[[ValSet, EventLog], dict]


def check_behaviour(run: RunFn, vs: ValSet, n: int, seed: int = 0, perturbations: int = 4,
                    device: torch.device | str = "cpu", phase: str = "eval",
                    vocab: int | None = None) -> dict:
    """run(valset, log) -> result must score the first n tokens of valset with a fresh model each
    call (a deep copy for TTT) and pass `log` to the evaluator. Runs it 2 + `perturbations` times."""
    seed = int(dist.broadcast_object(seed))
    base, res = _recorded(run, vs, n, seed, device, phase, vocab)
    problems = base.problems(res)
    rng = np.random.default_rng(seed)
    mine = [q for q in base.frontiers if 1 < q < n]
    fronts = sorted({q for r in range(dist.info().world_size) for q in dist.broadcast_object(mine, src=r)})
    pick = list(rng.choice(fronts, min(len(fronts), (perturbations + 1) // 2), replace=False)) if fronts else []
    qs = [int(q) for q in pick] + [int(q) for q in rng.integers(2, n, perturbations - len(pick))]
    twin, _ = _recorded(run, vs, n, seed, device, phase, vocab)  # the same input again
    noise = float(torch.maximum((twin.fingerprint - base.fingerprint).abs().max(),
                                (twin.nats - base.nats).abs().max()))
    deterministic = noise == 0.0
    # A nondeterministic evaluator (e.g. CUDA atomics in a TTT backward) cannot be compared bit for
    # bit; differences are then judged against 10x its run-to-run noise, and the report says so.
    tol = 10 * noise
    if noise > MAX_NOISE:
        problems.append(f"two runs on the same input committed distributions {noise:.3g} apart; above "
                        f"{MAX_NOISE:g} a perturbation test cannot tell a leak from noise: make the "
                        "evaluator deterministic (fixed batch shapes, no atomics) to certify it")
    leaks = []
    for q in qs:
        # Document boundaries stay: batching by document (LoRA TTT) may use them, and moving them
        # changes batch shapes, whose float rounding then differs by an ulp in unrelated rows.
        other, _ = _recorded(run, vs.with_tokens(perturb(vs.tokens, q, rng)), n, seed, device, phase,
                             vocab)
        changed = (other.fingerprint[:q + 1] - base.fingerprint[:q + 1]).abs() > tol
        changed[:q] |= (other.nats[:q] - base.nats[:q]).abs() > tol
        if bool(changed.any()):
            p = int(torch.nonzero(changed)[0, 0])
            leaks.append(q)
            problems.append(f"replacing tokens[{q}:] changed the committed distribution at "
                            f"{int(changed.sum())} position(s) <= {q} (first {p}): it depends on "
                            "tokens at or after the target (not causal)")
    return {"ok": not problems, "problems": problems, "phase": phase, "targets": n - 1,
            "perturbed_at": qs, "leaks": leaks, "deterministic": deterministic, "noise": noise,
            "max_norm_error": float(base.worst[0]), "max_nats_error": float(base.worst[1])}


def _recorded(run: RunFn, vs: ValSet, n: int, seed: int, device, phase: str, vocab: int | None):
    rec = Recorder(vs, n, seed, device, vocab)
    log = EventLog(phase=phase, n_tokens=n, rank=dist.info().rank)
    log.recorder = rec
    res = run(vs, log)
    rec.reduce()
    return rec, res


def check_events(logs: EventLog | list[EventLog], n_tokens: int, first_target: int = 1) -> dict:
    """Replay one phase's per-rank logs against the data's stream of n_tokens (not the log's claim)."""
    logs = [logs] if isinstance(logs, EventLog) else list(logs)
    n, first = n_tokens, first_target
    problems: list[str] = []
    for lg in logs:
        if lg.n_tokens != n or lg.first_target != first:
            problems.append(f"rank {lg.rank} log claims targets [{lg.first_target}, {lg.n_tokens}); "
                            f"the data has [{first}, {n})")
    bad_ranges = []
    count = np.zeros(n + 1, dtype=np.int64)
    for lg in logs:
        for e in lg.events:
            lo_ok = first if e["kind"] == "score" else 0
            for r in e["ranges"]:
                lo, hi = (int(v) for v in r)
                if not lo_ok <= lo < hi <= n:
                    bad_ranges.append(f"{e['kind']} [{lo}, {hi}) on rank {lg.rank}")
                elif e["kind"] == "score":
                    count[lo] += 1
                    count[hi] -= 1
    if bad_ranges:
        problems.append(f"{len(bad_ranges)} malformed or out-of-stream range(s) (need {first} <= lo < "
                        f"hi <= {n}): {'; '.join(bad_ranges[:3])}")
    count = np.cumsum(count)[:n]
    problems += _coverage_problems(count, first, "never scored", "scored")
    late, example = _replay_order(logs, n, problems)
    if late:
        problems.append(f"{late} target(s) scored after an update that saw them (train-then-score): "
                        f"{example}")
    kinds = [[e.get("scope", "global") for e in lg.events if e["kind"] == "update"] for lg in logs]
    n_updates = max(k.count("global") for k in kinds) + sum(k.count("local") for k in kinds)
    return {"ok": not problems, "problems": problems, "phase": logs[0].phase, "targets": n - first,
            "scored": int(count[first:].sum()), "updates": n_updates, "score_first": late == 0}


def _ranges(e: dict, n: int):
    for r in e["ranges"]:
        lo, hi = max(0, int(r[0])), min(n, int(r[1]))
        if lo < hi:
            yield lo, hi


def _replay_order(logs: list[EventLog], n: int, problems: list[str]) -> tuple[int, str]:
    """Score-first by event order: the k-th global update of every rank is one update (lock-step)."""
    never = np.iinfo(np.int64).max
    globals_ = [[e for e in lg.events if e["kind"] == "update" and e.get("scope", "global") == "global"]
                for lg in logs]
    if len({len(g) for g in globals_}) > 1:
        problems.append("ranks disagree on the number of global updates "
                        f"({', '.join(str(len(g)) for g in globals_)}): not lock-step, so the order "
                        "of one rank's updates and another's scores is unknown")
    seen = np.full(n, never, dtype=np.int64)  # 1-based index of the first global update reading p
    for g in globals_:
        for k, e in enumerate(g, start=1):
            for lo, hi in _ranges(e, n):
                np.minimum(seen[lo:hi], k, out=seen[lo:hi])
    late, example = 0, ""
    for lg in logs:
        done = 0
        local = np.zeros(n, dtype=bool)
        for e in lg.events:
            if e["kind"] == "update":
                if e.get("scope", "global") == "global":
                    done += 1
                else:
                    for lo, hi in _ranges(e, n):
                        local[lo:hi] = True
                continue
            for lo, hi in _ranges(e, n):
                bad = (seen[lo:hi] <= done) | local[lo:hi]
                if bad.any():
                    late += int(bad.sum())
                    j = lo + int(np.flatnonzero(bad)[0])
                    what = f"global update {int(seen[j])}" if seen[j] <= done else "a local update"
                    example = example or f"position {j} scored on rank {lg.rank} after {what} read it"
    return late, example


def check_normalized(dist_fn: Callable[[int], object], positions: Iterable[int], vocab: int,
                     tol: float = NORM_TOL) -> dict:
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
        if target is not None and abs(-np.log(max(float(d[target]), 1e-300)) - nats) > NATS_TOL * (1 + abs(nats)):
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


def _coverage_problems(counts: np.ndarray, first: int, never_text: str, verb: str) -> list[str]:
    """Exactly one commit per target from `first` on: the targets with none and with several."""
    never = np.flatnonzero(counts[first:] == 0) + first
    twice = np.flatnonzero(counts[first:] > 1) + first
    out = [f"{len(never)} target(s) {never_text} (positions {_examples(never)})"] if len(never) else []
    if len(twice):
        out.append(f"{len(twice)} target(s) {verb} more than once (positions {_examples(twice)})")
    return out
