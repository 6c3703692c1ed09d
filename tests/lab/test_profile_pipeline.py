"""lab/profile_pipeline.py: the pipelined figures in a CPU profile run."""
import json

from loopgolf.cli import main


def test_a_cpu_profile_writes_json_and_markdown(tmp_path):
    out = tmp_path / "prof"
    assert main(["profile", "--preset", "tiny", "--steps", "2", "--profile-steps", "1", "--out", str(out)]) == 0
    r = json.loads((out / "profile.json").read_text())
    assert r["preset"] == "tiny" and r["device"] == "cpu"
    assert len(r["stages"]) >= 1
    s = r["stages"][0]
    assert s["ms_per_step"] > 0
    assert set(s["phase_ms"]) == {"data", "forward_backward", "optimizer"}
    assert s["kernels"]["categories"].get("matmul", 0) > 0  # the aten::mm ops of the blocks
    assert "| category | ms/step |" in (out / "profile.md").read_text()
    pipe = s["pipeline"]  # back-to-back steps as training runs them; no allocator counters on CPU
    assert pipe["pipelined_ms_per_step"] > 0 and pipe["host_launch_ms"] > 0
    assert pipe["allocator_per_step"] == {}
    assert "pipelined (as training runs)" in (out / "profile.md").read_text()


