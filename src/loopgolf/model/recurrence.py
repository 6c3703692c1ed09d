"""The recurrence plan: which physical block runs at each virtual layer, and which parameter rows it uses.

This module is the single owner of depth recurrence. A spec string parses into a structure of
'+'-separated parts (prelude / core x loops / coda), each with its own form, so every topology is data:

    "9"          9 blocks, each once (the baseline)                 -> 0 1 2 3 4 5 6 7 8
    "1x12"       1 shared block x 12 loops (Universal Transformer)  -> 0 0 0 0 0 0 0 0 0 0 0 0
    "3x4"        3 shared blocks x 4 loops, in order               -> 0 1 2 0 1 2 0 1 2 0 1 2
    "4c7"        4 blocks cycled over 7 layers (PR #927)           -> 0 1 2 3 0 1 2
    "11:4-5x2"   11 layers, blocks 4..5 run twice in place          -> 0 1 2 3 4 5 4 5 6 7 8 9 10
    "2+3x4+1"    prelude 2, core of 3 blocks x 4 loops, coda 1      -> 0 1 2 3 4 2 3 4 2 3 4 2 3 4 5
    "0,1,0,1"    an explicit list

Each virtual layer also has a parameter *slot*: the row of per-virtual-layer tensors (loop embeddings,
per-layer scales, LoRA, ...) it uses, and a *visit slot* for per-visit tensors (cross-repeat scales,
untied repeat MLPs). A parsed plan uses row v at layer v. `plan.with_loops(k)` changes the core's loop
count (eval-time depth) and maps every layer to a layer of the plan it came from: the same (block,
visit), or, beyond the trained depth, the block's deepest trained visit. So the model never clamps an
index; the plan says which trained parameters a deeper layer reuses.
Pure Python: no torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace


class PlanError(ValueError):
    """A recurrence spec that cannot be parsed or describes an impossible topology."""


_INT = r"(\d+)"


@dataclass(frozen=True)
class Part:
    """One '+'-separated piece of a spec; its blocks are numbered from 0 (the plan adds offsets).

    form "flat": `n` blocks once; "loop": `n` blocks x `loops`; "cycle": `n` blocks cycled over
    `length` layers; "span": `n` layers with blocks a..b run `loops` times in place; "list": `order`.
    """

    form: str
    n: int = 0
    loops: int = 1
    length: int = 0
    span: tuple[int, int] = (0, 0)
    order: tuple[int, ...] = ()

    @property
    def loopable(self) -> bool:
        return self.form in ("loop", "cycle", "span")

    def schedule(self) -> list[int]:
        if self.form == "flat":
            return list(range(self.n))
        if self.form == "loop":
            return list(range(self.n)) * self.loops
        if self.form == "cycle":
            return [i % self.n for i in range(self.length)]
        if self.form == "span":
            a, b = self.span
            return list(range(a)) + list(range(a, b + 1)) * self.loops + list(range(b + 1, self.n))
        return list(self.order)

    def spec(self) -> str:
        a, b = self.span
        return {"flat": f"{self.n}", "loop": f"{self.n}x{self.loops}", "cycle": f"{self.n}c{self.length}",
                "span": f"{self.n}:{a}-{b}x{self.loops}", "list": ",".join(map(str, self.order))}[self.form]

    def with_loops(self, k: int) -> Part:
        # a cycle of n blocks "loops" k times when it runs n*k layers
        return replace(self, length=self.n * k) if self.form == "cycle" else replace(self, loops=k)


@dataclass(frozen=True)
class LayerSpec:
    """Static facts about one virtual layer of one plan (the model builds its modules from these).

    A block shared by several virtual layers gets one LayerSpec per visit, so per-layer choices (XSA
    "on the last n layers", V-injection, per-layer scales) apply per VIRTUAL layer (PR #927 set XSA on
    the shared block objects, so the last assignment won for every visit)."""

    v: int  # virtual index in this plan
    block: int  # physical block
    visit: int  # how many earlier visits this block had in the plan
    slot: int  # row of per-virtual-layer parameters
    visit_slot: int  # visit whose per-visit parameters (cross-repeat, repeat MLP) this layer uses
    n_virtual: int  # depth of the plan this layer belongs to
    skip_push: bool = False  # U-Net encoder layer: its output is saved for a decoder layer
    skip_row: int = -1  # U-Net decoder layer: row of the skip weights used for the popped skip; -1 = none


@dataclass(frozen=True)
class RecurrencePlan:
    spec: str
    parts: tuple[Part, ...]
    schedule: tuple[int, ...]  # virtual layer -> physical block
    slots: tuple[int, ...] = ()  # virtual layer -> parameter row; () = row v
    visit_slots: tuple[int, ...] = ()  # virtual layer -> per-visit parameter index; () = its visit
    skip_rows: tuple[int, ...] = field(default=None)  # U-Net pair j -> skip-weight row; None = row j

    def __post_init__(self):
        n = len(self.schedule)
        if not self.slots:
            object.__setattr__(self, "slots", tuple(range(n)))
        if not self.visit_slots:
            object.__setattr__(self, "visit_slots", self.visit_index)
        if self.skip_rows is None:
            object.__setattr__(self, "skip_rows", tuple(range(self.n_skips)))

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

    @property
    def core(self) -> int:
        """Index of the part whose loop count `with_loops` changes (the only loopable part)."""
        loopable = [i for i, p in enumerate(self.parts) if p.loopable]
        if len(loopable) != 1:
            raise PlanError(f"plan {self.spec!r} has {len(loopable)} loopable parts; with_loops needs "
                            "exactly one (forms NxK, NcL or N:A-BxK)")
        return loopable[0]

    @property
    def loops(self) -> int:
        core = self.parts[self.core]
        return -(-core.length // core.n) if core.form == "cycle" else core.loops

    def layers(self) -> tuple[LayerSpec, ...]:
        """One LayerSpec per virtual layer: block, visit, parameter slots and U-Net pairing."""
        n, n_enc, pairs = self.n_virtual, self.n_encoder, len(self.skip_rows)
        return tuple(
            LayerSpec(v=v, block=b, visit=visit, slot=self.slots[v], visit_slot=self.visit_slots[v],
                      n_virtual=n, skip_push=pairs > 0 and v < n_enc,
                      skip_row=self.skip_rows[v - n_enc] if 0 <= v - n_enc < pairs else -1)
            for v, (b, visit) in enumerate(zip(self.schedule, self.visit_index)))

    def with_loops(self, k: int) -> RecurrencePlan:
        """The same topology with the core run k times ("3x4" -> "3x6", "11:4-5x2" -> "11:4-5x3",
        "2+3x4+1" -> "2+3x6+1", "4c7" -> "4c{4k}"). Each layer reuses the parameter slots of this
        plan's layer with the same (block, visit), or of the block's deepest visit here when k runs it
        more often than this plan does."""
        if k < 1:
            raise PlanError("loop count must be >= 1")
        core = self.core
        parts = self.parts[:core] + (self.parts[core].with_loops(k),) + self.parts[core + 1:]
        spec = "+".join(p.spec() for p in parts)
        deeper = _from_parts(spec, parts)
        source: dict[tuple[int, int], int] = {}  # (block, visit) -> layer of this plan
        for v, key in enumerate(zip(self.schedule, self.visit_index)):
            source[key] = v
        deepest = {b: v for v, b in enumerate(self.schedule)}
        src = [source.get((b, visit), deepest[b]) for b, visit in zip(deeper.schedule, deeper.visit_index)]
        skip_rows = (tuple(self.skip_rows[min(j, len(self.skip_rows) - 1)] for j in range(deeper.n_skips))
                     if self.skip_rows else ())
        return replace(deeper, slots=tuple(self.slots[s] for s in src),
                       visit_slots=tuple(self.visit_slots[s] for s in src), skip_rows=skip_rows)

    def describe(self) -> str:
        return (f"plan {self.spec!r}: {self.n_blocks} physical blocks, {self.n_virtual} virtual layers "
                f"[{' '.join(map(str, self.schedule))}]")


def _from_parts(spec: str, parts: tuple[Part, ...]) -> RecurrencePlan:
    schedule: list[int] = []
    for part in parts:  # prelude + core + coda: blocks numbered left to right
        offset = max(schedule) + 1 if schedule else 0
        schedule.extend(b + offset for b in part.schedule())
    return RecurrencePlan(spec=spec, parts=parts, schedule=tuple(schedule))


def parse_plan(spec: str) -> RecurrencePlan:
    """Parse a plan spec (see module docstring) into a validated RecurrencePlan."""
    s = spec.replace(" ", "")
    if not s:
        raise PlanError("empty recurrence plan; use e.g. model.plan=9 or model.plan=3x4")
    try:
        parts = (_parse_list(s),) if "," in s else tuple(_parse_part(p) for p in s.split("+"))
    except PlanError as e:
        raise PlanError(f"recurrence plan {spec!r}: {e}") from None
    plan = _from_parts(spec, parts)
    if not plan.schedule:
        raise PlanError(f"recurrence plan {spec!r} has no layers")
    missing = sorted(set(range(plan.n_blocks)) - set(plan.schedule))
    if missing:
        raise PlanError(f"recurrence plan {spec!r} never runs block(s) {missing}: "
                        "blocks must be numbered 0..N-1 and each used at least once")
    return plan


def _parse_list(s: str) -> Part:
    try:
        out = tuple(int(t) for t in s.split(","))
    except ValueError:
        raise PlanError("an explicit plan is a comma list of block indices, e.g. 0,1,0,1") from None
    if min(out) < 0:
        raise PlanError("block indices must be >= 0")
    return Part("list", order=out)


def _parse_part(s: str) -> Part:
    if m := re.fullmatch(rf"{_INT}", s):
        return Part("flat", n=_positive(m[1], "layer count"))
    if m := re.fullmatch(rf"{_INT}x{_INT}", s):
        return Part("loop", n=_positive(m[1], "block count"), loops=_positive(m[2], "loop count"))
    if m := re.fullmatch(rf"{_INT}c{_INT}", s):
        n, length = _positive(m[1], "block count"), _positive(m[2], "layer count")
        if length < n:
            raise PlanError(f"cycling {n} blocks over {length} layers leaves blocks unused")
        return Part("cycle", n=n, length=length)
    if m := re.fullmatch(rf"{_INT}:{_INT}-{_INT}x{_INT}", s):
        n, a, b, k = (int(g) for g in m.groups())
        if not 0 <= a <= b < n:
            raise PlanError(f"span {a}-{b} is not inside layers 0..{n - 1}")
        if k < 1:
            raise PlanError("the span must run at least once")
        return Part("span", n=n, loops=k, span=(a, b))
    raise PlanError("unknown form; use N, NxK, NcL, N:A-BxK, P+NxK+C or a comma list")


def _positive(text: str, what: str) -> int:
    v = int(text)
    if v < 1:
        raise PlanError(f"{what} must be >= 1")
    return v


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
    """"11@0.35;..." + final plan -> stages in order; every stage must use the final plan's blocks.
    Each stage plan is parsed on its own, so its layer v uses parameter row v (as trained)."""
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
