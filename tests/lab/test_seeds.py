import argparse
import json

import pytest

from loopgolf.lab.seeds import build_report, collect, load_reference, register, run_seeds, write_report


def test_report_from_result_files(tmp_path, fake_seed_run):
    rows = [collect(fake_seed_run(tmp_path, s, v), s) for s, v in [(1, 2.05), (2, 2.06), (3, 2.052)]]
    rows.append(collect(tmp_path / "missing", 4, exit_code=1))
    rep = build_report("tiny", rows, reference=[2.07, 2.071, 2.069])
    assert rep["failed"] == [4] and rep["summary"]["n"] == 3
    assert rep["summary"]["val_loss_mean"] == pytest.approx((2.05 + 2.06 + 2.052) / 3)
    sig = rep["significance"]  # 0.016 nats better, but 3 noisy seeds: 0.01 < p < 0.25
    assert sig["delta_nats"] > 0.005 and 0.01 < sig["p"] < 0.25
    assert sig["progression"] and not sig["record"]
    j, m = write_report(rep, tmp_path)
    md = m.read_text()
    assert "| 1 | 100 |" in md and "failed (exit 1" in md and "Against the reference" in md
    assert json.loads(j.read_text())["seeds"][0]["eval_time_s"] == 12.5
    assert load_reference(j) == [2.05, 2.06, 2.052]
    (tmp_path / "ref.json").write_text("[1.0, 2.0]")
    assert load_reference(tmp_path / "ref.json") == [1.0, 2.0]
    (tmp_path / "bad.json").write_text('{"x": 1}')
    with pytest.raises(ValueError, match="bad.json"):
        load_reference(tmp_path / "bad.json")


def test_register_adds_seeds():
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    a = ap.parse_args(["seeds", "--preset", "tiny", "--out", "o", "--gpus", "0,1"])
    assert a.n == 3 and a.gpus == "0,1" and callable(a.fn)


@pytest.mark.slow
def test_two_real_seeds(tmp_path, tiny_args):
    sets = [a for a in tiny_args if a != "--set"] + ["train.max_steps=2"]
    rows = run_seeds("tiny", [1, 2], tmp_path, sets)
    assert [r["exit_code"] for r in rows] == [0, 0], (tmp_path / "seed_1" / "stdout.log").read_text()[-2000:]
    assert rows[0]["val_loss"] != rows[1]["val_loss"] and rows[0]["steps"] == 2
