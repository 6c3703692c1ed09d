import argparse
import json

from loopgolf.lab.seeds import build_report, collect
from loopgolf.lab.submission import build_submission, register


def test_submission_folder(tmp_path, fake_seed_run):
    runs = tmp_path / "runs"
    runs.mkdir()
    rows = [collect(fake_seed_run(runs, s, v), s) for s, v in [(42, 2.05), (1337, 2.06), (2025, 2.052)]]
    report = build_report("tiny", rows, reference=[2.07, 2.071, 2.069])
    ev = {"phases": {"load": {"seconds": 1.0, "within_eval_budget": True},
                     "sliding": {"val_bpb": 1.2, "seconds": 100.0, "within_eval_budget": True},
                     "ttt_sgd": {"val_bpb": 1.19, "seconds": 400.0, "within_eval_budget": True}},
          "legality": {"ok": True, "checks": {"ttt_sgd_events": {"ok": True, "score_first": True},
                                              "sliding_normalized": {"ok": True}}}}
    out = tmp_path / "records" / "2026-01-01_tiny"
    sub = build_submission(report, out, "Ada", "ada", blurb="A test.", eval_report=ev)
    saved = json.loads((out / "submission.json").read_text())
    assert saved == sub
    for key in ("author", "val_bpb", "val_loss", "bytes_total", "bytes_code", "seed_results", "hardware",
                "versions", "compliance", "t_statistic", "p_value"):
        assert key in saved, key
    assert saved["val_loss"] == round((2.05 + 2.06 + 2.052) / 3, 8)
    assert saved["seed_results"]["42"]["step_avg_ms"] == 90.0 and saved["hardware"] == "H100"
    c = saved["compliance"]
    assert c["artifact_under_16mb"] and c["training_under_600s"] and c["three_seeds"]
    assert c["eval_under_600s"] and c["score_first_ttt"] and c["legality_checker_passed"]
    assert (out / "train_seed1337.log").read_text() == "seed 1337\n"
    readme = (out / "README.md").read_text()
    assert "| 2025 |" in readme and "Compliance" in readme and "ttt_sgd: val_bpb 1.19000" in readme
    assert "not included" in readme and "config.json is missing" in readme  # fake runs have no config


def test_register_adds_submission():
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    a = ap.parse_args(["submission", "--seeds-report", "r.json", "--out", "o", "--author", "A"])
    assert a.track == "track_10min_16mb" and callable(a.fn)
