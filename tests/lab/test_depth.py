import json

from loopgolf.cli import main
from loopgolf.model.recurrence import parse_plan


def test_depth_plans_are_the_trained_plan_with_other_loop_counts():
    assert [parse_plan("1+1x2+1").with_loops(k).spec for k in (1, 2, 3)] == ["1+1x1+1", "1+1x2+1", "1+1x3+1"]


def test_depth_curve_and_plot(tiny_args, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(run)]) == 0
    val = [a for a in tiny_args if a.startswith("data.val=")][0].split("=", 1)[1]
    tok = [a for a in tiny_args if a.startswith("data.tokenizer=")][0].split("=", 1)[1]
    out, png = tmp_path / "depth.json", tmp_path / "depth.png"
    assert main(["depth", str(run / "model.lgz"), "--val", val, "--tokenizer", tok, "--loops", "1", "2", "3",
                 "--device", "cpu", "--json", str(out), "--png", str(png)]) == 0
    res = json.loads(out.read_text())
    assert [r["virtual_layers"] for r in res] == [3, 4, 5]
    assert [r["trained"] for r in res] == [False, True, False]
    trained = json.loads((run / "result.json").read_text())
    assert abs(res[1]["val_bpb"] - trained["val_bpb"]) < 1e-9  # same plan -> same score as the reload eval
    assert png.stat().st_size > 1000
