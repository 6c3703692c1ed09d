"""`loopgolf fidelity --pr N` (lab/script_profiles.py): each seed PR's profile puts the published script
on the preset's schedule in steps, the log lines of PRs #1453 and #1290 parse, --val-tokens stages one
truncated val shard, and --pr fills the preset, shape and stand-in. The fake script below is written
here: it implements the challenge scripts' env-driven schedule (warm-down over the last WARMDOWN_ITERS
iterations when there is no wall-clock cap, momentum warm-up over MUON_MOMENTUM_WARMUP_STEPS, a depth
ramp read only under a wall-clock cap, a TTT phase too long to wait for); the PRs' code is not stored."""
import argparse
import sys

import numpy as np
import pytest

from loopgolf.data.shards import load_shard, read_header
from loopgolf.lab.fidelity import (
    format_report,
    parse_script_log,
    run_script,
    script_env,
    stage_challenge_data,
)
from loopgolf.lab.fidelity_command import register, resolve_pr
from loopgolf.lab.script_profiles import PROFILES, profile_for
from loopgolf.presets import get_preset
from loopgolf.train.schedule import Progress, lr_multiplier, momentum_at

# PR #1453's ending (final_roundtrip, no codec in the name) and PR #1290's (its sliding score printed
# again as final_int8_zlib_roundtrip_exact after the real round trip)
LOG_1453 = """\
step:3/3 train_loss:6.1000 train_time:946ms step_avg:315.70ms
Total submission size: 95000000 bytes
Total submission size int8+zstd22: 15400000 bytes
final_roundtrip val_loss:2.0553 val_bpb:1.2172 eval_time:15396ms
final_roundtrip_exact val_loss:2.05526682 val_bpb:1.21724478
"""
LOG_1290 = """\
step:3/3 train_loss:6.1000 train_time:946ms step_avg:315.70ms
Total submission size int6+lzma: 15974737 bytes
final_int6_roundtrip val_loss:1.9151 val_bpb:1.1342 eval_time:7764ms
final_int6_roundtrip_exact val_loss:1.91512365 val_bpb:1.13424410
final_int6_sliding_window_exact val_loss:1.87509706 val_bpb:1.11054104
final_int8_zlib_roundtrip_exact val_loss:1.87509706 val_bpb:1.11054104
"""


def test_roundtrip_lines_of_pr1453_and_pr1290_parse():
    r = parse_script_log(LOG_1453)
    assert r.roundtrip_bpb == 1.21724478 and r.total_bytes == 15400000 and r.train_loss == {3: 6.1}
    r = parse_script_log(LOG_1290)
    assert r.roundtrip_bpb == 1.1342441  # the round trip, not the re-labelled sliding score
    assert r.total_bytes == 15974737


FAKE = '''
import os, sys
env = os.environ
steps, wd = int(env["ITERATIONS"]), int(env.get("WARMDOWN_ITERS", 1200))
mw, cap = int(env.get("MUON_MOMENTUM_WARMUP_STEPS", 500)), float(env["MAX_WALLCLOCK_SECONDS"])
stages = [(float(f), int(r)) for f, r in (s.split(":") for s in env.get("PROG_DEPTH", "0.4:2,1.0:4").split(","))]
depth = sorted(stages)[0][1]  # the ramp below is read only under a wall-clock cap, as in PR #1453
print(f"train_depth:{depth}")
for step in range(steps):
    lr = (steps - step) / wd if steps - wd <= step < steps else 1.0
    frac = min(step / mw, 1.0)
    print(f"step:{step + 1}/{steps} train_loss:{6 - step / steps:.4f} lr_scale:{lr:.6f} "
          f"momentum_ramp:{frac:.6f} step_avg:1.00ms")
if env.get("TTT_ENABLED", "0") == "1":
    sys.exit("score-first TTT over all of val: an hour on one GPU")
print("final_int8_zlib_roundtrip_exact val_loss:4.00000000 val_bpb:2.50000000")
'''


def _schedule(log: str) -> list[tuple[int, float, float]]:
    rows = []
    for line in log.splitlines():
        if line.startswith("step:"):
            f = dict(kv.split(":", 1) for kv in line.split())
            rows.append((int(f["step"].split("/")[0]) - 1, float(f["lr_scale"]), float(f["momentum_ramp"])))
    return rows


@pytest.mark.parametrize("preset", ["seed-recursive-4b", "seed-lora-mtp", "seed-shared-3x4", "seed-loop45"])
def test_profile_puts_the_script_on_the_presets_schedule(preset, tiny_shards, tmp_path):
    prof, steps = PROFILES[preset], 200
    d = tiny_shards["dir"]
    data = stage_challenge_data(f"{d}/*_train_*.bin", f"{d}/*_val_*.bin", tmp_path / "data")
    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE)
    env = script_env(data, str(tiny_shards["tokenizer"]), 1, steps, 1024, 32, "t", prof.env(steps))
    run = run_script(script, env, tmp_path / "w", tmp_path / "s.log", launcher=[sys.executable])
    log = (tmp_path / "s.log").read_text()
    assert run.exit_code == 0, log[-500:]  # TTT (PR #927) is off
    assert run.roundtrip_bpb == 2.5 and sorted(run.train_loss) == list(range(1, steps + 1))
    cfg = get_preset(preset).override([*prof.preset_sets, f"train.max_steps={steps}", "train.budget_s=0"])
    for step, lr, mom in _schedule(log):  # momentum: the ramp's fraction (start/end are each script's own)
        p = Progress(step=step, seconds=0.0, avg_step_s=0.0)
        assert lr == pytest.approx(lr_multiplier(p, cfg.optim, cfg.train), abs=0.01), step
        o = cfg.optim  # the preset's position on its momentum ramp, 0 -> 1
        ramp = (momentum_at(p, o, cfg.train) - o.momentum_warmup_start) / (o.momentum - o.momentum_warmup_start)
        assert mom == pytest.approx(ramp, abs=0.03), step
    if preset == "seed-shared-3x4":
        assert "train_depth:4" in log and cfg.model.plan_stages == ""  # both at full depth, no ramp


def test_without_the_profile_the_warmdown_spans_the_whole_run(tiny_shards, tmp_path):
    """The published WARMDOWN_ITERS=3500 at 200 iterations: LR scale 200/3500 from step 0."""
    d = tiny_shards["dir"]
    data = stage_challenge_data(f"{d}/*_train_*.bin", f"{d}/*_val_*.bin", tmp_path / "data")
    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE)
    published = PROFILES["seed-recursive-4b"].published
    run_script(script, script_env(data, str(tiny_shards["tokenizer"]), 1, 200, 1024, 32, "t",
                                  {**published, "TTT_ENABLED": "0"}),
               tmp_path / "w", tmp_path / "s.log", launcher=[sys.executable])
    assert _schedule((tmp_path / "s.log").read_text())[0][1] == pytest.approx(200 / 3500, abs=1e-6)


def test_profile_values_and_preset_sets():
    env = PROFILES["seed-loop45"].env(200)
    assert env["RECUR_START_STEP"] == "88" and env["WARMDOWN_ITERS"] == "116"  # 0.438 and 0.58 of 200
    assert env["BIGRAM_VOCAB_SIZE"] == "3072" and PROFILES["seed-loop45"].standin
    assert PROFILES["seed-recursive-4b"].env(200)["TTT_ENABLED"] == "0"
    assert PROFILES["seed-recursive-4b"].env(200)["NUM_LOOPS"] == "7"
    tau = 0.044 * 200
    assert float(PROFILES["seed-lora-mtp"].env(200)["EMA_DECAY"]) == pytest.approx(1 - 1 / tau, abs=1e-6)
    assert PROFILES["seed-lora-mtp-5x2"].env(200)["MODEL_DIM"] == "704"
    # a user --set moves the scaled knob with the preset
    assert PROFILES["seed-loop45"].env(200, ["optim.warmdown_frac=0.25"])["WARMDOWN_ITERS"] == "50"
    for prof in PROFILES.values():
        get_preset(prof.preset).override(list(prof.preset_sets)).validate()  # the sets are valid for the preset
        assert set(prof.fast) <= set(prof.why), prof.preset  # every shortcut says why
    assert get_preset("seed-loop45").override(list(PROFILES["seed-loop45"].preset_sets)).quant.fit_target == 0


def test_profile_for():
    assert profile_for(21).preset == "seed-lora-mtp"
    assert profile_for(21, "seed-lora-mtp-5x2").preset == "seed-lora-mtp-5x2"
    with pytest.raises(ValueError, match="PR #21's profiles"):
        profile_for(21, "seed-loop45")
    with pytest.raises(ValueError, match="no script profile"):
        profile_for(29)


def test_val_tokens_stages_one_truncated_shard(tiny_shards, tmp_path):
    d = tiny_shards["dir"]
    first = np.concatenate([np.asarray(load_shard(p)) for p in tiny_shards["val"]])
    out = stage_challenge_data(f"{d}/*_train_*.bin", f"{d}/*_val_*.bin", tmp_path / "data", val_tokens=100)
    vals = sorted(out.glob("fineweb_val_*.bin"))
    assert [v.name for v in vals] == ["fineweb_val_000000.bin"] and read_header(vals[0]) == 101
    assert np.array_equal(np.asarray(load_shard(vals[0])), first[:101])
    assert len(list(out.glob("fineweb_train_*.bin"))) == len(tiny_shards["train"])
    with pytest.raises(ValueError, match="hold only"):
        stage_challenge_data(f"{d}/*_train_*.bin", f"{d}/*_val_*.bin", tmp_path / "d2", val_tokens=first.size)


def _parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["fidelity", "--script", "s.py", "--train", "t", "--val", "v", "--tokenizer", "k",
                              "--out", "o", *argv])


def test_pr_fills_preset_shape_and_standin():
    args = _parse(["--pr", "1290", "--steps", "200"])
    prof = resolve_pr(args)
    assert (args.preset, args.seq_len, args.batch_tokens, args.sdpa_standin) == ("seed-loop45", 2048, 786_432, True)
    assert prof["env"]["RECUR_START_STEP"] == "88" and "quant.fit_target=0" in prof["preset_sets"]
    args = _parse(["--pr", "927", "--seq-len", "1024"])  # an explicit value wins
    resolve_pr(args)
    assert (args.preset, args.seq_len, args.batch_tokens, args.sdpa_standin) == ("seed-recursive-4b", 1024, 524_288,
                                                                                 False)
    args = _parse(["--preset", "tiny"])
    assert resolve_pr(args) is None and (args.seq_len, args.batch_tokens) == (1024, 524_288)
    with pytest.raises(SystemExit):
        resolve_pr(_parse([]))


def test_report_names_the_profile_and_val_subset():
    run = {"train_loss": {"1": 5.0}, "ms_per_step": 1.0, "total_bytes": 1, "roundtrip_bpb": 2.0, "exit_code": 0}
    report = {"script": [run], "preset": run, "sdpa_standin": False, "val_tokens": 4_194_304,
              "preset_vs_script": {"mean_abs_diff": 0.0, "common_steps": 1},
              "script_profile": {"pr": 1453, "env": {"PROG_DEPTH": "1.0:4"}, "preset_sets": ["model.plan_stages="]}}
    text = format_report(report)
    assert "PR #1453 profile; script env PROG_DEPTH=1.0:4" in text and "first 4,194,304 val tokens" in text
