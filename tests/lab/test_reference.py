"""The reference script as a benchmark arm: its env is a wall-clock run on the staged shards, its log
becomes steps / ms/step / tokens/s / bpb / bytes, and the speed ratio is tokens/s over its tokens/s."""
import sys

import pytest

from loopgolf.lab.reference import run_reference, speed_ratios

FAKE_REFERENCE = '''
import glob, os
assert os.environ["MAX_WALLCLOCK_SECONDS"] == "12.5"
assert glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_train_*.bin"))
for s in range(1, 4):
    print(f"step:{s}/20000 train_loss:{6 - s:.4f} train_time:{250 * s}ms step_avg:250.00ms")
print("Total submission size int8+zlib: 15181061 bytes")
print("final_int8_zlib_roundtrip val_loss:2.3000 val_bpb:1.4083 eval_time:10793ms")
'''


def test_reference_arm_and_ratio(tiny_shards, tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(FAKE_REFERENCE)
    res = run_reference(script, tiny_shards["dir"], str(tiny_shards["tokenizer"]), 12.5, tmp_path,
                        batch_tokens=524_288, launcher=[sys.executable])
    assert res["exit_code"] == 0 and res["steps"] == 3 and res["ms_per_step"] == 250.0
    assert res["tokens_per_s"] == pytest.approx(524_288 * 4)
    assert res["val_bpb"] == 1.4083 and res["total_bytes"] == 15181061
    assert "MAX_WALLCLOCK_SECONDS=12.5" in res["command"] and "HOME=" not in res["command"]
    ratios = speed_ratios([{"preset": "baseline", "tokens_per_s": 524_288 * 4 * 1.4}, {"preset": "x"}], res)
    assert ratios == {"baseline": pytest.approx(1.4)}
