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
    assert set(rep["legality"]["checks"]) == {f"{p}_{c}" for p in ("plain", "sliding", "mixture", "ttt_sgd")
                                              for c in ("events", "behaviour")} | {"tokenizer_bytes"}
    assert rep["legality"]["behavioural"]["ran"] and rep["legality"]["behavioural"]["perturbations"] == 4
    assert all(len(rep["legality"]["checks"][f"{p}_behaviour"]["perturbed_at"]) == 4
               for p in ("plain", "sliding", "mixture", "ttt_sgd"))
    p = rep["phases"]
    assert p["plain"]["val_tokens"] == p["sliding"]["val_tokens"] == p["ttt_sgd"]["val_tokens"] == 800
    assert all(r["within_eval_budget"] for r in p.values())
    assert (tmp_path / "ev" / "ttt_sgd.rank0.json").is_file()
    assert rep["recipes"]["ttt_sgd"]["sgd_chunk_tokens"] == 256 and rep["bytes_source"] == "tables"
    json.dumps(rep)  # the report is plain JSON
    text = format_report(rep)
    assert "legality: all checks passed (behavioural check on" in text


def test_skipping_the_behavioural_check_is_recorded(artifact, tiny_shards):
    rep = evaluate_suite(artifact, str(tiny_shards["dir"] / "*_val_*.bin"), str(tiny_shards["tokenizer"]),
                         "cpu", stride=16, batch_seqs=8, behaviour=False)
    assert rep["legality"]["ok"] and not rep["legality"]["behavioural"]["ran"]
    assert "behavioural check SKIPPED" in format_report(rep)


def test_a_tokenizer_other_than_the_manifests_is_refused(artifact, tiny_shards, tmp_path):
    import shutil

    from loopgolf.data.tokenizer import TokenizerError
    for p in tiny_shards["val"]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "manifest.json").write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    with pytest.raises(TokenizerError, match="another tokenizer"):
        evaluate_suite(artifact, str(tmp_path / "*_val_*.bin"), str(tiny_shards["tokenizer"]), "cpu")


def test_the_artifacts_own_recipe_is_a_checked_phase(tmp_path, tiny_shards):
    cfg = get_preset("tiny")
    cfg.eval.max_tokens = 1200
    cfg.override(["eval.method=ttt_lora", "eval.lora_phases=1", "eval.lora_docs_per_batch=4",
                  "eval.lora_chunk=16", "eval.lora_rank=2", "eval.lora_phase_batch_seqs=4"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "lora.lgz"
    write_artifact(path, {k: v.detach() for k, v in model.state_dict().items()}, {"config": cfg.to_dict()}, cfg.quant)
    torch.set_flush_denormal(True)
    try:
        rep = evaluate_suite(path, str(tiny_shards["dir"] / "*_val_*.bin"), str(tiny_shards["tokenizer"]), "cpu",
                             stride=32, batch_seqs=8, perturbations=2)
    finally:
        torch.set_flush_denormal(False)
    assert rep["legality"]["ok"], rep["legality"]
    assert rep["phases"]["ttt_lora"]["phases_run"] == 1 and "ttt_lora_behaviour" in rep["legality"]["checks"]


def test_behaviour_slice_holds_the_phase_prefix_and_one_more_batch():
    import numpy as np

    from loopgolf.config import EvalConfig
    from loopgolf.data.valset import ValSet
    from loopgolf.lab.eval_suite import behaviour_slice

    tokens = np.full(1000, 5, dtype=np.uint16)
    tokens[::10] = 1  # a BOS every 10 tokens: document d starts at 10 d
    vs = ValSet(tokens, np.ones(1000, dtype=np.int64))
    ecfg = EvalConfig(method="ttt_lora", lora_phases=1, lora_docs_per_batch=4)
    assert behaviour_slice(vs, ecfg, 8, 1000, 0) == 81  # 2 batches of 4 documents
    prefix = EvalConfig(method="ttt_lora", lora_phases=1, lora_docs_per_batch=4, lora_phase_prefix_docs=6)
    assert behaviour_slice(vs, prefix, 8, 1000, 0) == 121  # ceil(6 / 4) + 1 = 3 batches


def test_register_adds_evaluate():
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["evaluate", "a.lgz", "--val", "v", "--tokenizer", "t", "--ttt", "lora", "--mixture"])
    assert args.ttt == "lora" and args.mixture and args.sliding_stride == 64 and callable(args.fn)
    assert not args.skip_behaviour and args.perturbations == 4


def test_a_non_finite_score_exits_2_with_one_line(tmp_path, tiny_shards, capsys):
    cfg = get_preset("tiny")
    cfg.eval.max_tokens = 400
    model = GPT(cfg.model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["tok_emb.weight"][:] = float("nan")
    path = tmp_path / "nan.lgz"
    write_artifact(path, state, {"config": cfg.to_dict()}, cfg.quant)
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["evaluate", str(path), "--val", str(tiny_shards["dir"] / "*_val_*.bin"),
                          "--tokenizer", str(tiny_shards["tokenizer"]), "--device", "cpu", "--skip-behaviour"])
    assert args.fn(args) == 2
    err = capsys.readouterr().err
    assert "error: plain: the loss is not finite" in err and len(err.strip().splitlines()) == 1


def test_case_transformed_shards_are_scored_in_original_bytes(artifact, tmp_path, make_docs, make_case_shards):
    docs = make_docs(40, seed=6)
    tok = make_case_shards(tmp_path, docs)
    rep = evaluate_suite(artifact, str(tmp_path / "*_val_*.bin"), str(tok), "cpu", stride=16, batch_seqs=8,
                         max_tokens=0, behaviour=False)
    from loopgolf.data.valset import load_val_set
    vs = load_val_set(str(tmp_path / "*_val_*.bin"), tok, 512)
    n = rep["phases"]["plain"]["val_tokens"] + 1
    assert rep["bytes_source"] == "sidecar"
    assert rep["phases"]["plain"]["val_bytes"] == int(vs.target_bytes[1:n].sum())
    assert rep["phases"]["sliding"]["val_bytes"] == rep["phases"]["plain"]["val_bytes"]
    assert int(vs.target_bytes.sum()) == sum(len(d.encode("utf-8")) for d in docs)


def test_loopgolf_eval_counts_the_sidecar_bytes(artifact, tmp_path, make_docs, make_case_shards):
    """`loopgolf eval` (the reload score of every run) on case-transformed shards reports the
    original UTF-8 bytes, like `evaluate` (issue 16, acceptance 2)."""
    import json
    import subprocess
    import sys

    docs = make_docs(40, seed=7)
    tok = make_case_shards(tmp_path, docs)
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "loopgolf", "eval", str(artifact), "--val",
                           str(tmp_path / "*_val_*.bin"), "--tokenizer", str(tok), "--device", "cpu",
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["bytes_source"] == "sidecar"
    from loopgolf.data.valset import load_val_set

    vs = load_val_set(str(tmp_path / "*_val_*.bin"), tok, 512)
    assert res["val_bytes"] == int(vs.target_bytes[1:res["val_tokens"] + 1].sum())
    assert int(vs.target_bytes.sum()) == sum(len(d.encode("utf-8")) for d in docs)
    from loopgolf.data.luts import build_byte_luts, target_bytes
    from loopgolf.data.tokenizer import load_tokenizer

    n = res["val_tokens"] + 1  # the byte tables would count the case-operator pieces too
    t = vs.tokens[:n].astype("int64")
    assert int(target_bytes(build_byte_luts(load_tokenizer(tok), 512), t[:-1], t[1:]).sum()) > res["val_bytes"]
