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


# --- per-virtual-layer flags ---------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """Static facts about one virtual layer of one plan; blocks read flags from here, so a flag set
    "on the last n layers" applies per VIRTUAL layer even when blocks are shared (PR #927 set XSA on
    the shared block objects, so the last assignment won for every visit)."""

    v: int  # virtual index
    block: int  # physical block
    visit: int  # how many earlier visits this block had in the plan
    xsa: bool = False
    ln_scale: float = 1.0
    parallel: bool = False
    ve_slot: int = -1  # index into the V-injection scales, -1 = none


def layer_specs(plan: RecurrencePlan, xsa_last: int = 0, ln_scale: bool = False, parallel_from: int = -1,
                ve_layers: tuple[int, ...] = ()) -> tuple[LayerSpec, ...]:
    n = plan.n_virtual
    xsa_from = 0 if xsa_last < 0 else n - xsa_last
    ve = [v % n for v in ve_layers]
    return tuple(
        LayerSpec(v=v, block=b, visit=visit, xsa=xsa_last != 0 and v >= xsa_from,
                  ln_scale=(b + 1) ** -0.5 if ln_scale else 1.0,
                  parallel=parallel_from >= 0 and b >= parallel_from,
                  ve_slot=ve.index(v) if v in ve else -1)
        for v, (b, visit) in enumerate(zip(plan.schedule, plan.visit_index)))


def parse_int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise PlanError(f"{text!r} is not a comma list of integers") from None


# --- stages: plans that change during training (loop activation, progressive depth) --------------

@dataclass(frozen=True)
class Stage:
    plan: RecurrencePlan
    until_frac: float = float("inf")  # this stage runs while progress < until_frac ...
    until_step: int = 2**62  # ... and step < until_step

    def covers(self, frac: float, step: int) -> bool:
        return frac < self.until_frac and step < self.until_step


def parse_stages(stages: str, final: str) -> tuple[Stage, ...]:
    """"11@0.35;..." + final plan -> stages in order; every stage must use the final plan's blocks."""
    out = []
    for item in filter(None, (t.strip() for t in stages.split(";"))):
        if "@" not in item:
            raise PlanError(f"plan stage {item!r}: expected SPEC@FRACTION or SPEC@sSTEP, e.g. 11@0.35")
        spec, until = item.rsplit("@", 1)
        try:
            stage = (Stage(parse_plan(spec), until_step=int(until[1:])) if until.startswith("s")
                     else Stage(parse_plan(spec), until_frac=float(until)))
        except ValueError as e:
            if isinstance(e, PlanError):
                raise
            raise PlanError(f"plan stage {item!r}: {until!r} is not a fraction or sSTEP") from None
        out.append(stage)
    out.append(Stage(parse_plan(final)))
    n_blocks = out[-1].plan.n_blocks
    for st in out[:-1]:
        if st.plan.n_blocks > n_blocks:
            raise PlanError(f"plan stage {st.plan.spec!r} uses {st.plan.n_blocks} blocks but the final "
                            f"plan {final!r} has {n_blocks}")
    fracs = [s.until_frac for s in out[:-1] if s.until_frac != float("inf")]
    if fracs != sorted(fracs) or any(not 0 < f <= 1 for f in fracs):
        raise PlanError(f"plan stages {stages!r}: fractions must increase within (0, 1]")
    return tuple(out)


def stage_index(stages: tuple[Stage, ...], frac: float, step: int) -> int:
    for i, st in enumerate(stages):
        if st.covers(frac, step):
            return i
    return len(stages) - 1


def plan_with_loops(spec: str, loops: int) -> str:
    """The same topology with another loop count: "3x4" -> "3x6", "11:4-5x2" -> "11:4-5x3",
    "2+3x4+1" -> "2+3x6+1", "4c7" (4 blocks cycled) -> "4c{4*loops}"."""
    s = spec.replace(" ", "")
    if loops < 1:
        raise PlanError("loop count must be >= 1")
    for pattern, fmt in ((rf"^(.*\d)x{_INT}(\+.*)?$", None), (rf"^{_INT}c{_INT}$", "cycle")):
        m = re.match(pattern, s)
        if m and fmt == "cycle":
            return f"{m[1]}c{int(m[1]) * loops}"
        if m:
            return f"{m[1]}x{loops}{m[3] or ''}"
    raise PlanError(f"plan {spec!r} has no loop count to change")
