"""`loopgolf ablate loops`: the flat arm runs each physical block once, shapes parse, arms compare with
the Welch test, and a tiny CPU ablation writes its report and plot with every arm under the cap."""
import json

import pytest

from loopgolf.lab.ablate import (
    FIT_MARGIN_BYTES,
    ablate_loops,
    arms,
    compare_arms,
    flat_plan,
    format_report,
    parse_shape,
    plot_report,
)


@pytest.mark.parametrize("spec,flat", [("11:3-5x3", "11"), ("2+3x4+1", "6"), ("1x12", "1"), ("4c7", "4"),
                                       ("9", "9"), ("0,1,0,1", "2")])
def test_flat_plan_runs_each_block_once(spec, flat):
    assert flat_plan(spec) == flat


def test_shapes_and_arms():
    assert parse_shape("small:model.dim=64, model.plan=2x4") == ("small", ["model.dim=64", "model.plan=2x4"])
    for bad in ("small", "small:", ":model.dim=64", "small:model.dim"):
        with pytest.raises(ValueError, match="--shape"):
            parse_shape(bad)
    a = arms("record-loop345", ["small:model.dim=256"])
    assert a == {"flat": ["model.plan=11", "model.plan_stages="], "looped": [], "small": ["model.dim=256"]}
    with pytest.raises(ValueError, match="taken"):
        arms("tiny", ["flat:model.dim=8"])


def test_compare_arms_sign_and_test():
    looped = {"summary": {"val_bpb_mean": 1.30, "val_loss_mean": 2.0}, "val_loss": [1.99, 2.01]}
    flat = {"summary": {"val_bpb_mean": 1.35, "val_loss_mean": 2.1}, "val_loss": [2.09, 2.11]}
    cmp = compare_arms(looped, flat)
    assert cmp["delta_bpb"] == pytest.approx(-0.05)
    assert cmp["welch_looped_better"]["p"] < 0.05
    assert compare_arms({"failed": [1]}, flat) is None


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tiny_args, tmp_path):
    sets = [a for a in tiny_args if a != "--set"]
    cap = 600_000
    report = ablate_loops("tiny", [cap], [1], 30.0, tmp_path, sets, [])
    per_cap = report["caps"][str(cap)]
    for arm in ("flat", "looped"):
        a = per_cap["arms"][arm]
        assert a["failed"] == [], a
        assert a["max_total_bytes"] <= cap - FIT_MARGIN_BYTES
        assert a["summary"]["n"] == 1
    flat_cfg = json.loads((tmp_path / f"cap{cap}/flat/seed_1/config.json").read_text())
    assert flat_cfg["model"]["plan"] == "3" and flat_cfg["model"]["plan_stages"] == ""
    assert "looped - flat:" in format_report(report)
    plot_report(report, tmp_path / "loops.png")
    assert (tmp_path / "loops.png").read_bytes()[:4] == b"\x89PNG"
