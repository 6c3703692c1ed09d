import pytest

from loopgolf.model.recurrence import PlanError, parse_plan

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
