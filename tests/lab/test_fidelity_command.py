"""`loopgolf fidelity`'s command (lab/fidelity_command.py): earlier script logs and preset runs are
reused by seed, bad reuse arguments are refused with the fix, and a second call adds seeds without
repeating the first call's runs (a fake published script, written in tests/lab/test_fidelity.py)."""
import json
import sys

import pytest

from tests.lab.test_fidelity import FAKE_SCRIPT, LOG


def test_reused_script_logs_parse_by_seed_and_refuse_bad_input(tmp_path):
    from loopgolf.lab.fidelity_command import reused_preset_run, reused_script_logs

    log = tmp_path / "old.log"
    log.write_text(LOG)
    runs = reused_script_logs([f"42={log}"], "challenge")
    assert list(runs) == [42] and runs[42].train_loss[3] == 6.1 and runs[42].command == f"reused log {log}"
    for bad, says in ((f"x={log}", "give SEED=PATH"), (str(log), "give SEED=PATH"),
                      (f"1={tmp_path / 'none.log'}", "is not a file")):
        with pytest.raises(SystemExit, match=says):
            reused_script_logs([bad], "challenge")
    (tmp_path / "empty.log").write_text("no steps here\n")
    with pytest.raises(SystemExit, match="no train_loss lines"):
        reused_script_logs([f"1={tmp_path / 'empty.log'}"], "challenge")
    with pytest.raises(SystemExit, match="no train losses"):
        reused_preset_run(str(tmp_path))


@pytest.mark.slow
def test_a_second_seed_reuses_the_first_calls_runs(tiny_shards, tmp_path, monkeypatch):
    """Call 1 runs script seed 1 and the preset; call 2 adds script seed 2 and preset seed 2 and
    reuses call 1's script log and preset run instead of repeating them."""
    from loopgolf.cli import main

    monkeypatch.setattr("loopgolf.lab.fidelity.run_script.__defaults__", (1, None, [sys.executable]))
    d = tiny_shards["dir"]
    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE_SCRIPT)
    common = ["fidelity", "--script", str(script), "--preset", "tiny", "--train", f"{d}/*_train_*.bin",
              "--val", f"{d}/*_val_*.bin", "--tokenizer", str(tiny_shards["tokenizer"]), "--steps", "4",
              "--batch-tokens", "1024", "--seq-len", "32", "--window", "2", "--set", "train.device=cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--script-seeds", "1", "--out", str(one)]) == 0
    assert main([*common, "--script-seeds", "1", "2", "--script-log", f"1={one / 'script_seed1.log'}",
                 "--preset-seeds", "1", "2", "--preset-run", str(one / "preset_run"), "--out", str(two)]) == 0
    assert not (two / "script_seed1.log").exists() and (two / "script_seed2.log").is_file()
    assert not (two / "preset_run").exists() and (two / "preset_run_seed2" / "metrics.jsonl").is_file()
    report = json.loads((two / "fidelity.json").read_text())
    first = json.loads((one / "fidelity.json").read_text())
    assert report["script"][0]["train_loss"] == first["script"][0]["train_loss"]
    assert report["script"][0]["command"].startswith("reused log")
    assert report["preset"]["train_loss"] == first["preset"]["train_loss"]
    assert report["script_seed_spread"]["mean_abs_diff"] == pytest.approx(0.001)
    assert report["preset_seed_spread"]["common_steps"] == 4
    with pytest.raises(SystemExit, match=r"seed\(s\) \['7'\] not in --script-seeds"):
        main([*common, "--script-seeds", "1", "--script-log", f"7={one / 'script_seed1.log'}", "--out", str(two)])


def test_the_report_names_the_environment_and_sets_that_ran():
    """--script-env and --set override the PR profile's defaults; the report's note must show what
    ran (PR #1453's run of 2026-12-03b printed the profile's XSA_LAST_N=4 though the script ran 0)."""
    from loopgolf.lab.fidelity import format_report
    from loopgolf.lab.fidelity_command import as_run

    prof = {"pr": 1453, "env": {"XSA_LAST_N": "4", "PROG_DEPTH": "1.0:4"}, "preset_sets": ["eval.method=plain"]}
    ran = as_run(prof, {**prof["env"], "XSA_LAST_N": "0"}, [*prof["preset_sets"], "model.xsa_last=0"])
    assert prof["env"]["XSA_LAST_N"] == "4" and as_run(None, {}, []) is None
    run = {"train_loss": {"1": 5.0}, "ms_per_step": 1.0, "total_bytes": 1, "roundtrip_bpb": 2.0, "exit_code": 0}
    text = format_report({"script": [run], "preset": run, "sdpa_standin": False, "script_profile": ran,
                          "preset_vs_script": {"mean_abs_diff": 0.0, "common_steps": 1}})
    assert "script env PROG_DEPTH=1.0:4 XSA_LAST_N=0;" in text and "'model.xsa_last=0'" in text


def test_pr_runs_refuse_a_script_that_is_not_the_published_file(tmp_path):
    """--pr N checks the script's sha256 against PR N's published train_gpt.py before any data is
    staged (an earlier session had PR #21's root train_gpt.py, a plain baseline, under the record's
    name); --modified-script runs an edited copy on purpose, and the report says so."""
    import hashlib

    from loopgolf.cli import main
    from loopgolf.lab.fidelity import format_report
    from loopgolf.lab.fidelity_command import check_script
    from loopgolf.lab.script_profiles import PROFILES

    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE_SCRIPT)
    digest = hashlib.sha256(FAKE_SCRIPT.encode()).hexdigest()
    prof = {"pr": 21, "records": "records/x/ImprovedBaseline", "published_sha256": digest}
    assert check_script(script, prof, False) == {"path": str(script), "sha256": digest, "published": True}
    assert check_script(script, None, False)["published"] is None  # no --pr: nothing to compare with
    edited = tmp_path / "edited.py"
    edited.write_text(FAKE_SCRIPT + "# my patch\n")
    with pytest.raises(SystemExit, match=r"is not PR #21's published records/x/ImprovedBaseline/train_gpt.py"
                                         r".*refs/pull/21/head:records/x/ImprovedBaseline/train_gpt.py"):
        check_script(edited, prof, False)
    mine = check_script(edited, prof, True)
    assert mine["published"] is False and mine["sha256"] != digest
    run = {"train_loss": {"1": 5.0}, "ms_per_step": 1.0, "total_bytes": 1, "roundtrip_bpb": 2.0, "exit_code": 0}
    text = format_report({"script": [run], "preset": run, "sdpa_standin": False, "script_file": mine,
                          "preset_vs_script": {"mean_abs_diff": 0.0, "common_steps": 1}})
    assert f"edited copy (sha256 {mine['sha256'][:16]}" in text
    with pytest.raises(SystemExit, match="is not a file"):
        check_script(tmp_path / "missing.py", prof, False)
    # through the command line: refused before the (absent) shards are looked at
    with pytest.raises(SystemExit, match=r"not PR #21's published .*2026-03-18_ImprovedBaseline/train_gpt.py"):
        main(["fidelity", "--pr", "21", "--script", str(script), "--train", str(tmp_path / "no_train_*.bin"),
              "--val", str(tmp_path / "no_val_*.bin"), "--tokenizer", "none.model", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    for p in PROFILES.values():
        assert len(p.sha256) == 64 and int(p.sha256, 16) >= 0
    assert PROFILES["seed-lora-mtp"].sha256 == PROFILES["seed-lora-mtp-5x2"].sha256  # one file, two shapes
