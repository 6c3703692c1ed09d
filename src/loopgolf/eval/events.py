"""Evaluation event log: which token positions each scoring and each model update covered, in order.

Legal evaluation (techniques.md 4d, issue #1017 conditions C1-C3) is a statement about ORDER: a
token's loss must be committed before any update that saw the token, and every target is scored
exactly once. The evaluators (sliding.py, ttt.py, mixture.py) record here, at the moment they
happen, every scoring (the target positions it added to the sums) and every update (the token
positions the update read, inputs or targets), each stamped with `version`, the number of updates
applied before it. lab/legality.py replays the log; it never trusts the evaluator's own claims.

Positions are indices into the validation token stream; scoring position p means predicting
tokens[p] from tokens[:p]. An update is "global" (every rank applies it in lock-step: the k-th
global update of each rank is the same update, whose reads are the union of the ranks' ranges) or
"local" (only this rank's state changes, e.g. a per-document LoRA step). The checker replays each
rank's events in the order they were appended; `version` stamps are informational only.

A legality checker may attach a `recorder` (lab/legality.Recorder): the evaluators then also hand it
every committed distribution (eval/bpb.commit_record). It is never serialized.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from loopgolf.data.atomic import atomic_write_text

Range = tuple[int, int]  # half-open [lo, hi) of token positions


def merge_ranges(ranges: list[Range]) -> list[Range]:
    """Sorted union of half-open ranges; adjacent ranges are joined."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def _join_adjacent(ranges: list[list[int]]) -> list[list[int]]:
    """Join [a, b), [b, c) into [a, c) in order; overlaps are kept, so double scoring stays visible."""
    out: list[list[int]] = []
    for lo, hi in ranges:
        if out and out[-1][1] == lo and out[-1][0] < lo < hi:
            out[-1][1] = hi
        else:
            out.append([lo, hi])
    return out


@dataclass
class EventLog:
    """Append-only log of ("score" | "update", version, ranges) events for one evaluation phase.

    n_tokens is the length of the token stream the positions index; first_target is the first
    position that must be scored (1: token 0 only ever serves as context).
    """

    phase: str
    n_tokens: int
    first_target: int = 1
    rank: int = 0
    version: int = 0  # updates applied so far
    # Informational only (older logs carry it): the checker never trusts it; each update's own
    # scope says whether other ranks share it, and unmarked updates count as global.
    lockstep: bool = True
    events: list[dict] = field(default_factory=list)
    recorder: object = field(default=None, repr=False, compare=False)

    def score(self, ranges: list[Range]) -> None:
        """Record that the targets at `ranges` were scored and their losses committed."""
        self._add("score", ranges)

    def update(self, ranges: list[Range], scope: str = "global") -> None:
        """Record one model/state update that read the tokens at `ranges`; bumps the version.

        scope "global": every rank takes part in this update (call it on every rank, with an
        empty list where a rank read nothing); "local": only this rank's state changes."""
        if scope not in ("global", "local"):
            raise ValueError(f"update scope {scope!r}: choose global or local")
        self._add("update", ranges)
        self.events[-1]["scope"] = scope
        self.version += 1
        if self.recorder is not None:
            self.recorder.mark_update()

    def step_without_update(self) -> None:
        """This rank read nothing for a global update the other ranks made."""
        self.update([])

    def _add(self, kind: str, ranges: list[Range]) -> None:
        ranges = _join_adjacent([[int(a), int(b)] for a, b in ranges])
        last = self.events[-1] if self.events else None
        if (kind == "score" and last is not None and last["kind"] == "score"
                and last["version"] == self.version):
            last["ranges"] = _join_adjacent(last["ranges"] + ranges)
            return
        self.events.append({"kind": kind, "version": self.version, "rank": self.rank,
                            "ranges": ranges})

    # --- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"phase": self.phase, "n_tokens": self.n_tokens, "first_target": self.first_target,
                "rank": self.rank, "version": self.version, "lockstep": self.lockstep,
                "events": self.events}

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "EventLog":
        try:
            log = cls(phase=str(d["phase"]), n_tokens=int(d["n_tokens"]),
                      first_target=int(d.get("first_target", 1)), rank=int(d.get("rank", 0)),
                      version=int(d["version"]), lockstep=bool(d.get("lockstep", True)),
                      events=list(d["events"]))
            for e in log.events:
                if e["kind"] not in ("score", "update") or not isinstance(e["ranges"], list):
                    raise ValueError(e)
                if not all(isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r)
                           for r in e["ranges"]):
                    raise ValueError(f"ranges must be [lo, hi] integer pairs: {e['ranges'][:3]}")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a loopgolf event log ({e!r}); write it with "
                             "EventLog.write") from None
        return log

    @classmethod
    def read(cls, path: str | os.PathLike) -> "EventLog":
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))


def merge_logs(logs: list[EventLog]) -> EventLog:
    """One log from the per-rank logs of one phase (versions are global, so events interleave by
    version; within a version, scores come before the update that closes it)."""
    if not logs:
        raise ValueError("merge_logs: no logs given")
    first = logs[0]
    if any(lg.n_tokens != first.n_tokens or lg.phase != first.phase for lg in logs):
        raise ValueError("merge_logs: logs come from different phases or token streams")
    events = sorted((e for lg in logs for e in lg.events),
                    key=lambda e: (e["version"], e["kind"] == "update", e["rank"]))
    return EventLog(first.phase, first.n_tokens, first.first_target, rank=-1,
                    version=max(lg.version for lg in logs), events=events)
