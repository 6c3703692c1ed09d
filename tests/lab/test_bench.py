"""The proxy benchmark's pieces that need no GPU: MFU from a result, the side-by-side table, shards
from bench-pack files, and the GPU-count check."""
import json

import pytest
import zstandard

from loopgolf.data.shards import list_shards, read_header
from loopgolf.lab.bench import format_table, mfu, prepare_bench_shards, run_side_by_side


def test_mfu_is_model_flops_over_the_datasheet_peak():
    res = {"env": {"gpus": ["NVIDIA H200"]}, "model_tflops_per_s": 98.9, "world_size": 1}
    assert mfu(res) == pytest.approx(0.1)
    assert mfu({**res, "world_size": 2}) == pytest.approx(0.05)
    assert mfu({**res, "env": {"gpus": ["Some CPU"]}}) is None
    assert mfu({"env": {}, "model_tflops_per_s": 1.0}) is None


def test_table_prints_each_preset_with_four_decimal_bpb():
    table = format_table([{"preset": "baseline", "steps": 10, "val_bpb": 1.39241234},
                          {"preset": "universal"}])
    lines = table.splitlines()
    assert lines[0].startswith("preset | steps")
    assert "baseline | 10" in lines[1] and "1.3924" in lines[1] and "1.39241" not in lines[1]
    assert lines[2].startswith("universal | -")


def test_prepare_makes_train_and_val_shards(tmp_path, tiny_sp_model, make_docs):
    bench = tmp_path / "bench"
    bench.mkdir()
    for name, seed in (("train-00", 1), ("val", 2)):
        lines = "".join(json.dumps({"text": d}) + "\n" for d in make_docs(30, seed))
        (bench / f"{name}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    made = prepare_bench_shards(bench, tiny_sp_model, tmp_path / "out", ["train-00", "val"], workers=1)
    assert set(made) == {"train-00", "val"}
    train, val = list_shards(str(tmp_path / "out/*_train_*.bin")), list_shards(str(tmp_path / "out/*_val_*.bin"))
    assert train and val and all(read_header(p) > 0 for p in train + val)
    with pytest.raises(FileNotFoundError, match="train-09"):
        prepare_bench_shards(bench, tiny_sp_model, tmp_path / "out", ["train-09"])


def test_side_by_side_needs_a_gpu_per_preset(tmp_path):
    with pytest.raises(ValueError, match="2 presets need 2 GPUs"):
        run_side_by_side(["baseline", "universal"], tmp_path, tmp_path / "t.model", 1.0, tmp_path, [], gpus=[0])
