"""`loopgolf evaluate` on a tiny artifact written directly (no training run needed)."""
import argparse
import json

import pytest
import torch

from loopgolf.compress.artifact import write_artifact
from loopgolf.lab.eval_suite import evaluate_suite, format_report, register
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset


@pytest.fixture
def artifact(tmp_path, tiny_shards):
    cfg = get_preset("tiny")
    cfg.eval.max_tokens = 800
    torch.manual_seed(0)
    model = GPT(cfg.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "model.lgz"
    write_artifact(path, {k: v.detach() for k, v in model.state_dict().items()},
                   {"config": cfg.to_dict()}, cfg.quant)
    return path


def test_suite_runs_every_phase_and_passes_the_checker(artifact, tiny_shards, tmp_path):
    torch.set_flush_denormal(True)
    try:
        rep = evaluate_suite(artifact, str(tiny_shards["dir"] / "*_val_*.bin"), str(tiny_shards["tokenizer"]),
                             "cpu", stride=16, ttt="sgd", mixture=True, batch_seqs=8,
                             ttt_chunk=256, ttt_epochs=1, events_dir=tmp_path / "ev")
    finally:
        torch.set_flush_denormal(False)
    assert set(rep["phases"]) == {"load", "plain", "sliding", "mixture", "ttt_sgd"}
    assert rep["legality"]["ok"], rep["legality"]
    assert set(rep["legality"]["checks"]) == {"sliding_events", "sliding_normalized", "mixture_events",
                                              "ttt_sgd_events", "tokenizer_bytes"}
    p = rep["phases"]
    assert p["plain"]["val_tokens"] == p["sliding"]["val_tokens"] == p["ttt_sgd"]["val_tokens"] == 800
    assert all(r["within_eval_budget"] for r in p.values())
    assert (tmp_path / "ev" / "ttt_sgd.rank0.json").is_file()
    json.dumps(rep)  # the report is plain JSON
    assert "legality: all checks passed" in format_report(rep)


def test_register_adds_evaluate():
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["evaluate", "a.lgz", "--val", "v", "--tokenizer", "t", "--ttt", "lora", "--mixture"])
    assert args.ttt == "lora" and args.mixture and args.sliding_stride == 64 and callable(args.fn)
