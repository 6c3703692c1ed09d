import pytest

from loopgolf.model.recurrence import PlanError, parse_plan, parse_stages, stage_index

CASES = {
    "9": [0, 1, 2, 3, 4, 5, 6, 7, 8],
    "1x12": [0] * 12,
    "3x4": [0, 1, 2] * 4,
    "4c7": [0, 1, 2, 3, 0, 1, 2],
    "11:4-5x2": [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10],
    "11:3-5x3": [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10],
    "2+3x4+1": [0, 1] + [2, 3, 4] * 4 + [5],
    "0,1,0,1": [0, 1, 0, 1],
}


@pytest.mark.parametrize("spec,expected", CASES.items())
def test_schedule_equals_explicit_list(spec, expected):
    plan = parse_plan(spec)
    assert list(plan.schedule) == expected
    assert plan.n_virtual == len(expected)
    assert plan.n_blocks == max(expected) + 1


def test_span_plans_have_published_virtual_depths():
    assert parse_plan("11:4-5x2").n_virtual == 13
    assert parse_plan("11:3-5x3").n_virtual == 17


def test_unet_split_matches_baseline():
    plan = parse_plan("9")
    assert (plan.n_encoder, plan.n_skips) == (4, 4)
    plan = parse_plan("1x12")
    assert (plan.n_encoder, plan.n_skips) == (6, 6)


def test_visit_index_counts_loop_iterations():
    assert parse_plan("3x2").visit_index == (0, 0, 0, 1, 1, 1)
    assert parse_plan("11:4-5x2").visit_index[4:8] == (0, 0, 1, 1)


@pytest.mark.parametrize("spec", ["", "x3", "3x0", "0", "11:9-12x2", "4c2", "0,2", "a,b", "-1,0", "3y4"])
def test_impossible_plans_raise_clear_errors(spec):
    with pytest.raises(PlanError) as e:
        parse_plan(spec)
    assert "plan" in str(e.value)


def test_plans_keep_their_structure():
    plan = parse_plan("2+3x4+1")
    assert [p.spec() for p in plan.parts] == ["2", "3x4", "1"]
    assert plan.core == 1 and plan.loops == 4
    assert parse_plan("11:4-5x2").parts[0].span == (4, 5)


WITH_LOOPS = {
    ("3x4", 6): ("3x6", [0, 1, 2] * 6),
    ("11:4-5x2", 3): ("11:4-5x3", [0, 1, 2, 3] + [4, 5] * 3 + [6, 7, 8, 9, 10]),
    ("2+3x4+1", 2): ("2+3x2+1", [0, 1, 2, 3, 4, 2, 3, 4, 5]),
    ("1+1x2+1", 4): ("1+1x4+1", [0, 1, 1, 1, 1, 2]),
    ("4c7", 2): ("4c8", [0, 1, 2, 3] * 2),
    ("1x12", 3): ("1x3", [0, 0, 0]),
}


@pytest.mark.parametrize("spec,k", WITH_LOOPS)
def test_with_loops_changes_only_the_core(spec, k):
    new_spec, schedule = WITH_LOOPS[spec, k]
    plan = parse_plan(spec).with_loops(k)
    assert plan.spec == new_spec and list(plan.schedule) == schedule
    assert parse_plan(new_spec).schedule == plan.schedule


def test_with_the_same_loops_is_the_same_plan():
    for spec, k in (("3x4", 4), ("11:4-5x2", 2), ("2+3x4+1", 4), ("4c8", 2)):
        plan, same = parse_plan(spec), parse_plan(spec).with_loops(k)
        assert (same.schedule, same.slots, same.visit_slots, same.skip_rows) == \
            (plan.schedule, plan.slots, plan.visit_slots, plan.skip_rows)


def test_deeper_layers_reuse_the_slots_of_the_deepest_trained_loop():
    plan = parse_plan("2+3x2+1").with_loops(4)
    # prelude 0 1 | core 2 3 4 x4 | coda 5; trained: 0 1 | 2 3 4 2 3 4 | 5  (slots 0..8)
    assert plan.slots == (0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 5, 6, 7, 8)
    assert plan.visit_slots == (0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0)
    shallower = parse_plan("2+3x2+1").with_loops(1)
    assert shallower.slots == (0, 1, 2, 3, 4, 8)  # the coda keeps its own row
    cycle = parse_plan("4c7").with_loops(3)  # blocks 0-2 ran twice, block 3 once
    assert cycle.slots == (0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 3)
    twice = parse_plan("3x2").with_loops(4).with_loops(5)  # composes back to the trained rows
    assert max(twice.slots) == 5 and twice.slots[-3:] == (3, 4, 5)


def test_unet_pairs_and_skip_rows():
    layers = parse_plan("5").layers()
    assert [s.skip_push for s in layers] == [True, True, False, False, False]
    assert [s.skip_row for s in layers] == [-1, -1, 0, 1, -1]
    deeper = parse_plan("1x4").with_loops(6)  # 3 pairs; the trained plan had 2 rows
    assert deeper.skip_rows == (0, 1, 1)
    assert parse_plan("1x1").with_loops(3).skip_rows == ()  # no trained skips: none at depth either


def test_layers_carry_block_visit_and_slot():
    layers = parse_plan("2x3").layers()
    assert [(s.block, s.visit, s.slot) for s in layers] == [(0, 0, 0), (1, 0, 1), (0, 1, 2), (1, 1, 3),
                                                            (0, 2, 4), (1, 2, 5)]
    assert all(s.n_virtual == 6 for s in layers)


@pytest.mark.parametrize("spec", ["9", "0,1,0,1", "2x2+3x3"])
def test_with_loops_needs_exactly_one_loopable_part(spec):
    with pytest.raises(PlanError, match="loopable"):
        parse_plan(spec).with_loops(2)
    with pytest.raises(PlanError, match=">= 1"):
        parse_plan("3x4").with_loops(0)


def test_stages_keep_their_schedules():
    stages = parse_stages("11@0.48", "11:4-5x2")
    assert stages[0].plan.schedule == tuple(range(11))
    assert stages[1].plan.schedule == (0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10)
    assert stage_index(stages, 0.47, 10**6) == 0 and stage_index(stages, 0.48, 0) == 1
    ramp = parse_stages("3x2@0.3;3x3@0.5", "3x4")
    assert [stage_index(ramp, f, 0) for f in (0.0, 0.29, 0.3, 0.49, 0.5, 1.0)] == [0, 0, 1, 1, 2, 2]
    assert [s.plan.n_virtual for s in ramp] == [6, 9, 12]
    by_step = parse_stages("11@s3000", "11:4-5x2")
    assert [stage_index(by_step, 0.9, s) for s in (2999, 3000)] == [0, 1]


@pytest.mark.parametrize("stages", ["11", "11@x", "12@0.3", "3x2@0.5;3x3@0.3"])
def test_bad_stages_raise_clear_errors(stages):
    with pytest.raises(PlanError):
        parse_stages(stages, "11:4-5x2")
