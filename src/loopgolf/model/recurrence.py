"""The recurrence plan: which physical block runs at each virtual layer.

This module is the single owner of depth recurrence. A plan is an explicit tuple mapping every
virtual layer to a physical block index, parsed from a short spec string, so every topology is data:

    "9"          9 blocks, each once (the baseline)                 -> 0 1 2 3 4 5 6 7 8
    "1x12"       1 shared block x 12 loops (Universal Transformer)  -> 0 0 0 0 0 0 0 0 0 0 0 0
    "3x4"        3 shared blocks x 4 loops, in order               -> 0 1 2 0 1 2 0 1 2 0 1 2
    "4c7"        4 blocks cycled over 7 layers (PR #927)           -> 0 1 2 3 0 1 2
    "11:4-5x2"   11 layers, blocks 4..5 run twice in place          -> 0 1 2 3 4 5 4 5 6 7 8 9 10
    "2+3x4+1"    prelude 2, core of 3 blocks x 4 loops, coda 1      -> 0 1 2 3 4 2 3 4 2 3 4 2 3 4 5
    "0,1,0,1"    an explicit list

The model asks the plan for its schedule and U-Net split; it never decides depth itself.
Pure Python: no torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


class PlanError(ValueError):
    """A recurrence spec that cannot be parsed or describes an impossible topology."""


@dataclass(frozen=True)
class RecurrencePlan:
    spec: str
    schedule: tuple[int, ...]  # virtual layer -> physical block

    @property
    def n_virtual(self) -> int:
        return len(self.schedule)

    @property
    def n_blocks(self) -> int:
        return max(self.schedule) + 1

    @property
    def visit_index(self) -> tuple[int, ...]:
        """For each virtual layer, how many times its block already ran before it (0 = first)."""
        seen: dict[int, int] = {}
        out = []
        for b in self.schedule:
            out.append(seen.get(b, 0))
            seen[b] = seen.get(b, 0) + 1
        return tuple(out)

    @property
    def n_encoder(self) -> int:
        """U-Net split over the virtual sequence: the first half pushes skips (baseline L670)."""
        return self.n_virtual // 2

    @property
    def n_skips(self) -> int:
        return min(self.n_encoder, self.n_virtual - self.n_encoder)

    def describe(self) -> str:
        return (f"plan {self.spec!r}: {self.n_blocks} physical blocks, {self.n_virtual} virtual layers "
                f"[{' '.join(map(str, self.schedule))}]")


_INT = r"(\d+)"


def parse_plan(spec: str) -> RecurrencePlan:
    """Parse a plan spec (see module docstring) into a validated RecurrencePlan."""
    s = spec.replace(" ", "")
    if not s:
        raise PlanError("empty recurrence plan; use e.g. model.plan=9 or model.plan=3x4")
    try:
        schedule = _parse(s)
    except PlanError as e:
        raise PlanError(f"recurrence plan {spec!r}: {e}") from None
    if not schedule:
        raise PlanError(f"recurrence plan {spec!r} has no layers")
    used = set(schedule)
    missing = sorted(set(range(max(schedule) + 1)) - used)
    if missing:
        raise PlanError(f"recurrence plan {spec!r} never runs block(s) {missing}: "
                        "blocks must be numbered 0..N-1 and each used at least once")
    return RecurrencePlan(spec=spec, schedule=tuple(schedule))


def _parse(s: str) -> list[int]:
    if "," in s:
        try:
            out = [int(t) for t in s.split(",")]
        except ValueError:
            raise PlanError("an explicit plan is a comma list of block indices, e.g. 0,1,0,1") from None
        if min(out) < 0:
            raise PlanError("block indices must be >= 0")
        return out
    if "+" in s:  # prelude + core + coda, blocks numbered left to right
        out: list[int] = []
        for part in s.split("+"):
            offset = max(out) + 1 if out else 0
            out.extend(b + offset for b in _parse(part))
        return out
    if m := re.fullmatch(rf"{_INT}", s):
        return list(range(_positive(m[1], "layer count")))
    if m := re.fullmatch(rf"{_INT}x{_INT}", s):
        n, k = _positive(m[1], "block count"), _positive(m[2], "loop count")
        return list(range(n)) * k
    if m := re.fullmatch(rf"{_INT}c{_INT}", s):
        n, length = _positive(m[1], "block count"), _positive(m[2], "layer count")
        if length < n:
            raise PlanError(f"cycling {n} blocks over {length} layers leaves blocks unused")
        return [i % n for i in range(length)]
    if m := re.fullmatch(rf"{_INT}:{_INT}-{_INT}x{_INT}", s):
        n, a, b, k = (int(g) for g in m.groups())
        if not 0 <= a <= b < n:
            raise PlanError(f"span {a}-{b} is not inside layers 0..{n - 1}")
        if k < 1:
            raise PlanError("the span must run at least once")
        span = list(range(a, b + 1))
        return list(range(a)) + span * k + list(range(b + 1, n))
    raise PlanError("unknown form; use N, NxK, NcL, N:A-BxK, P+NxK+C or a comma list")


def _positive(text: str, what: str) -> int:
    v = int(text)
    if v < 1:
        raise PlanError(f"{what} must be >= 1")
    return v
