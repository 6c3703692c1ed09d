"""`loopgolf fidelity`: the challenge's log lines parse, curves compare with known answers, shards are
staged under the names the published scripts glob, and a fake published script (written here, in the
challenge's log format) runs side by side with the tiny preset."""
import json
import sys

import pytest

from loopgolf.lab.fidelity import (
    SDPA_STANDIN,
    compare_curves,
    fidelity_report,
    format_report,
    parse_script_log,
    preset_command,
    run_preset,
    run_script,
    script_env,
    stage_challenge_data,
)

LOG = """\
model_params:17059912
step:1/20 train_loss:6.9357 train_time:315ms step_avg:315.00ms
step:2/20 train_loss:6.5000 train_time:630ms step_avg:315.50ms
step:2/20 val_loss:6.4000 val_bpb:3.9000 train_time:630ms step_avg:315.50ms
step:3/20 train_loss:6.1000 train_time:946ms step_avg:315.70ms
Serialized model int8+zlib: 15133368 bytes (payload:19135512 raw_torch:19170649 payload_ratio:3.91x)
Total submission size int8+zlib: 15181061 bytes
final_int8_zlib_roundtrip val_loss:2.2474 val_bpb:1.3310 eval_time:10793ms
final_int8_zlib_roundtrip_exact val_loss:2.24736472 val_bpb:1.33101597
"""


def test_parse_the_challenge_log():
    r = parse_script_log(LOG)
    assert r.train_loss == {1: 6.9357, 2: 6.5, 3: 6.1}  # the val line at step 2 is not a train loss
    assert r.ms_per_step == 315.70
    assert r.total_bytes == 15181061
    assert r.roundtrip_bpb == 1.33101597  # the _exact line wins over the rounded one
    assert r.steady_ms_per_step == 315.5  # (946 - 315) ms over steps 1 -> 3: step 1's own time left out


def test_steady_speed_leaves_out_the_first_steps_compile(tmp_path):
    """PR #1453's script spends 18 s of compile in its step 1, which its step_avg keeps; the steady
    figure runs from the first logged step's clock to the last's (also for a loopgolf run dir)."""
    from loopgolf.lab.fidelity import parse_run_dir, steady_ms

    assert steady_ms({1: 18.0, 2: 19.0, 201: 218.0}) == 1000.0 and steady_ms({5: 1.0}) is None
    log = "\n".join(f"step:{s}/3 train_loss:5.0 train_time:{t}ms step_avg:{t / s:.2f}ms"
                     for s, t in ((1, 18000), (2, 19000), (3, 20000)))
    r = parse_script_log(log)
    assert r.ms_per_step == 6666.67 and r.steady_ms_per_step == 1000.0
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(
        {"event": "train", "step": s, "loss": 5.0, "train_s": t}) for s, t in ((1, 2.0), (2, 3.04), (3, 4.06))))
    assert parse_run_dir(tmp_path).steady_ms_per_step == 1030.0


def test_compare_curves_known_answer():
    a = {1: 5.0, 2: 4.0, 3: 3.0, 4: 2.0}
    b = {1: 5.5, 2: 4.0, 3: 2.0, 5: 9.0}
    cmp = compare_curves(a, b, window=2)
    assert cmp["common_steps"] == 3
    assert cmp["mean_abs_diff"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert [w["mean_abs_diff"] for w in cmp["windows"]] == [pytest.approx(0.25), pytest.approx(1.0)]
    assert compare_curves(a, {9: 1.0}, 2)["mean_abs_diff"] is None


def test_a_running_mean_log_is_compared_with_the_presets_means_over_the_same_steps():
    """PR #29 logs the mean loss of the last 10 steps; the preset's per-step losses are averaged the
    same way before the difference is taken (steps 1..4 here, windows of 2)."""
    from loopgolf.lab.fidelity import RunLog, window_means

    per_step = {1: 10.0, 2: 6.0, 3: 5.0, 4: 3.0}
    assert window_means(per_step, [2, 4, 6], 2) == {2: 8.0, 4: 4.0}  # step 6's window is not logged
    script = RunLog(train_loss={2: 8.5, 4: 4.0}, loss_window=2)
    report = fidelity_report([script], RunLog(train_loss=per_step), window=10, standin=False)
    assert report["preset_vs_script"]["mean_abs_diff"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert "2-step running means" in format_report(json.loads(json.dumps(report)))
    per_step_script = fidelity_report([RunLog(train_loss={2: 8.5, 4: 4.0})], RunLog(train_loss=per_step), 10, False)
    assert per_step_script["preset_vs_script"]["mean_abs_diff"] == pytest.approx((2.5 + 1.0) / 2)


def test_stage_links_shards_under_challenge_names(tiny_shards, tmp_path):
    d = tiny_shards["dir"]
    out = stage_challenge_data(f"{d}/*_train_*.bin", f"{d}/*_val_*.bin", tmp_path / "stage")
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "fineweb_train_000000.bin" and "fineweb_val_000000.bin" in names
    assert len([n for n in names if "_train_" in n]) == len(tiny_shards["train"])
    assert (out / "fineweb_val_000000.bin").read_bytes() == tiny_shards["val"][0].read_bytes()


def test_sdpa_standin_matches_causal_attention():
    torch = pytest.importorskip("torch")
    ns: dict = {}
    exec(SDPA_STANDIN, ns)
    q, k, v = (torch.randn(2, 5, 4, 8) for _ in range(3))  # (B, T, H, D) as FA3 takes them
    y = ns["flash_attn_func"](q, k, v, causal=True)
    att = (q.transpose(1, 2) @ k.transpose(1, 2).mT) / 8 ** 0.5
    att = att.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    torch.testing.assert_close(y, (att @ v.transpose(1, 2)).transpose(1, 2))


FAKE_SCRIPT = '''
import glob, os
steps = int(os.environ["ITERATIONS"])
assert os.environ["MAX_WALLCLOCK_SECONDS"] == "0"
assert glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_train_*.bin"))
assert glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_val_*.bin"))
seed = int(os.environ["SEED"])
for s in range(1, steps + 1):
    print(f"step:{s}/{steps} train_loss:{6.0 - 0.1 * s + 0.001 * seed:.4f} train_time:{10 * s}ms step_avg:10.00ms")
print("Total submission size int8+zlib: 123456 bytes")
print("final_int8_zlib_roundtrip_exact val_loss:4.00000000 val_bpb:2.50000000")
'''


@pytest.mark.slow
def test_script_and_preset_side_by_side(tiny_shards, tmp_path):
    d = tiny_shards["dir"]
    train, val, tok = f"{d}/*_train_*.bin", f"{d}/*_val_*.bin", str(tiny_shards["tokenizer"])
    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE_SCRIPT)
    data = stage_challenge_data(train, val, tmp_path / "data")
    runs = [run_script(script, script_env(data, tok, seed, 4, 1024, 32, f"s{seed}", {}), tmp_path / f"w{seed}",
                       tmp_path / f"s{seed}.log", launcher=[sys.executable]) for seed in (1, 2)]
    assert all(r.exit_code == 0 for r in runs) and runs[0].train_loss[4] == pytest.approx(5.601)
    cmd = preset_command("tiny", train, val, tok, 1, 4, 1024, 32, tmp_path / "run", ["train.device=cpu"])
    lg = run_preset(cmd, tmp_path / "run", tmp_path / "preset.log")
    assert lg.exit_code == 0, (tmp_path / "preset.log").read_text()[-2000:]
    assert sorted(lg.train_loss) == [1, 2, 3, 4] and lg.steps == 4
    report = fidelity_report(runs, lg, window=2, standin=False)
    assert report["preset_vs_script"]["common_steps"] == 4
    assert report["script_seed_spread"]["mean_abs_diff"] == pytest.approx(0.001)
    assert lg.total_bytes and lg.roundtrip_bpb is not None
    text = format_report(json.loads(json.dumps(report)))  # as read back from fidelity.json
    assert "script seed-to-seed mean |diff|: 0.0010" in text
    png = tmp_path / "curves.png"
    from loopgolf.lab.fidelity import plot_report

    plot_report(json.loads(json.dumps(report)), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_verdict_compares_cross_code_pairs_with_within_code_spread():
    from loopgolf.lab.fidelity import RunLog, seed_verdict

    def run(v):
        return RunLog(train_loss={1: v, 2: v})
    v = seed_verdict([run(1.0), run(1.2)], [run(1.1), run(1.3)])
    assert v["cross_pairs"] == pytest.approx([0.1, 0.3, 0.1, 0.1])
    assert v["within"] == {"script": pytest.approx(0.2), "preset": pytest.approx(0.2)}
    assert (v["cross_mean"], v["verdict"]) == (pytest.approx(0.15), "within")
    v = seed_verdict([run(1.0), run(1.2)], [run(2.0)])
    assert (v["cross_mean"], v["within_mean"], v["verdict"]) == (pytest.approx(0.9), pytest.approx(0.2), "outside")
    assert seed_verdict([run(1.0)], [run(1.1)]) is None  # no second seed of either code: no spread to judge by
    script = RunLog(train_loss={2: 9.0, 4: 5.0}, loss_window=2)  # running means: the presets are averaged too
    v = seed_verdict([script], [RunLog(train_loss={1: 10.0, 2: 8.0, 3: 6.0, 4: 4.0}),
                                RunLog(train_loss={1: 10.0, 2: 8.0, 3: 6.0, 4: 6.0})])
    assert v["cross_pairs"] == pytest.approx([0.0, 0.5]) and v["within"] == {"preset": pytest.approx(0.5)}
