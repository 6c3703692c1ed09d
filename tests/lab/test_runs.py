"""End to end through the CLI: train -> artifact -> fresh-process reload -> exact bpb."""
import json
import os
import subprocess
import sys

import pytest

from loopgolf.cli import main
from loopgolf.compress.budget import code_bytes
from loopgolf.config import ConfigError, RunConfig
from loopgolf.lab.export import export_single_file, pack_source, single_file_source
from loopgolf.lab.runs import run_code_bytes
from loopgolf.presets import get_preset


def test_train_writes_run_dir_and_reloaded_score(tiny_args, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "tiny", *tiny_args, "--run-dir", str(run_dir)]) == 0
    for name in ("config.json", "env.json", "train.log", "metrics.jsonl", "model.lgz", "result.json", "eval.json"):
        assert (run_dir / name).is_file(), name
    res = json.loads((run_dir / "result.json").read_text())
    assert res["steps"] == 8
    assert res["eval"]["reload"].startswith("fresh process")
    assert 0 < res["val_bpb"] < 20 and abs(res["quant_gap_bpb"]) < 0.05
    assert res["total_bytes"] == res["artifact_bytes"] + res["code_bytes"]
    # the counted code is the packed single-file export of this run's config, the file that ships
    cfg = RunConfig.from_json((run_dir / "config.json").read_text())
    shipped = export_single_file(cfg, tmp_path / "train_gpt.py", packed=True)
    assert res["code_bytes"] == shipped.stat().st_size < code_bytes()
    env = json.loads((run_dir / "env.json").read_text())
    assert len(env["code_sha256"]) == 64
    out = capsys.readouterr().out
    assert "val_bpb:" in out and "artifact_bytes:" in out


def test_run_code_bytes_modes():
    cfg = get_preset("tiny")
    assert run_code_bytes(cfg, "packed") == len(pack_source(single_file_source(cfg)).encode())
    assert run_code_bytes(cfg, "core") is None  # the pipeline then counts the core sources
    with pytest.raises(ConfigError, match="code bytes mode 'zip'"):
        run_code_bytes(cfg, "zip")


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_torchrun_matches_single_process_losses(tiny_args, tmp_path, world):
    """Same global batch on 1 and N gloo processes -> same per-step losses (tolerance 2e-3 nats:
    gradient sums are reordered across ranks and Muon's Newton-Schulz runs in bf16)."""
    def losses(run_dir, nproc):
        cmd = [sys.executable, "-m", "loopgolf", "train", "--preset", "tiny", *tiny_args,
               "--run-dir", str(run_dir)]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", "-m", "loopgolf"] + cmd[3:]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if r["event"] == "train"], json.loads((run_dir / "result.json").read_text())

    single, res1 = losses(tmp_path / "one", 1)
    multi, resn = losses(tmp_path / "many", world)
    assert len(single) == len(multi) == 8
    assert max(abs(a - b) for a, b in zip(single, multi)) < 2e-3, (single, multi)
    assert resn["world_size"] == world
    assert abs(res1["val_bpb"] - resn["val_bpb"]) < 5e-3


@pytest.mark.parametrize("calib", ["train", "self"])
def test_gptq_int6_run_inside_the_budget(tiny_args, tmp_path, calib):
    run_dir = tmp_path / "run"
    sets = ["quant.gptq=true", "quant.scheme=int6_row", "quant.row_scale_min=0", "quant.codec=best",
            f"quant.gptq_calib={calib}", "quant.gptq_calib_batches=4", "quant.clip=search",
            "train.budget_s=30", "quant.gptq_reserve_s=2"]
    assert main(["train", "--preset", "tiny", *tiny_args, *sum((["--set", s] for s in sets), []),
                 "--run-dir", str(run_dir)]) == 0
    res = json.loads((run_dir / "result.json").read_text())
    assert "calibration_s" in res["phases"] and "gptq_s" in res["phases"]
    assert abs(res["quant_gap_bpb"]) < 0.05
    log = (run_dir / "train.log").read_text()
    assert f"calibration source:{calib}" in log


def test_train_reports_the_runs_scoring_recipe(tiny_args, tmp_path):
    """`loopgolf train` scores the reloaded artifact with cfg.eval (here sliding windows), records
    the method, and keeps the plain pre-quantization score beside it."""
    import dataclasses

    from loopgolf.data.valset import load_val_set
    from loopgolf.eval.recipe import evaluate
    from loopgolf.pipeline import model_from_artifact

    run_dir = tmp_path / "run"
    sets = ["eval.method=sliding", "eval.stride=8", "eval.max_tokens=2048"]
    assert main(["train", "--preset", "tiny", *tiny_args, *sum((["--set", s] for s in sets), []),
                 "--run-dir", str(run_dir)]) == 0
    res = json.loads((run_dir / "result.json").read_text())
    assert res["eval_method"] == "sliding" == res["eval"]["method"]
    model, cfg = model_from_artifact(run_dir / "model.lgz", "cpu")
    assert cfg.eval.method == "sliding" and cfg.eval.stride == 8  # the recipe travels in the artifact
    vs = load_val_set(cfg.data.val, cfg.data.tokenizer, cfg.model.vocab_size)
    direct = evaluate(model, vs, cfg.eval, "cpu", cfg.data.seq_len)
    assert res["val_bpb"] == direct["val_bpb"]
    plain = evaluate(model, vs, dataclasses.replace(cfg.eval, method="plain"), "cpu", cfg.data.seq_len)
    assert plain["val_bpb"] != res["val_bpb"]  # the reported score is the recipe's, not plain windows
