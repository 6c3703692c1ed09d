"""The typed scoring recipe: one evaluator per EvalConfig.method, plain = sliding with stride = context."""
import copy
import math

import numpy as np
import pytest
import torch

from loopgolf.config import EVAL_METHODS, ConfigError, EvalConfig, RunConfig
from loopgolf.eval.bpb import NonFiniteScoreError
from loopgolf.eval.recipe import EVALUATORS, evaluate

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("flush_denormals")


@torch.no_grad()
def _reference_plain(model, tokens, luts, seq_len, batch_seqs, max_tokens):
    """The evaluate_bpb of commit 7ca8670, before plain became sliding with stride = context."""
    n = min(len(tokens), max_tokens + 1) if max_tokens > 0 else len(tokens)
    n = ((n - 1) // seq_len) * seq_len + 1
    sums = torch.zeros(3, dtype=torch.float64)
    for w in range(0, (n - 1) // seq_len, batch_seqs):
        w_end = min((n - 1) // seq_len, w + batch_seqs)
        chunk = torch.from_numpy(tokens[w * seq_len:w_end * seq_len + 1].astype(np.int64))
        x, y = chunk[:-1].view(-1, seq_len), chunk[1:].view(-1, seq_len)
        sums[0] += model(x, y).double().sum()
        sums[1] += luts.count(x, y).double().sum()
        sums[2] += y.numel()
    return {"val_loss": float(sums[0] / sums[2]), "val_bpb": float(sums[0] / (math.log(2) * sums[1])),
            "val_bytes": int(sums[1])}


def test_plain_equals_the_old_evaluate_bpb(val, vs, small_model):
    tokens, luts = val
    model = small_model().eval()
    ref = _reference_plain(model, tokens, luts, 32, 8, 1600)
    got = evaluate(model, vs, EvalConfig(batch_tokens=32 * 8), CPU, seq_len=32, max_tokens=1600)
    assert got["method"] == "plain" and got["bytes_source"] == "tables"
    assert got["val_bytes"] == ref["val_bytes"]
    assert got["val_bpb"] == pytest.approx(ref["val_bpb"], rel=1e-12)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-12)


def test_every_method_is_registered_and_scores_the_same_targets(vs, small_model):
    assert tuple(EVALUATORS) == EVAL_METHODS
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    results = {}
    for m in EVAL_METHODS:
        ecfg = EvalConfig(method=m, stride=16, batch_tokens=32 * 8, sgd_chunk_tokens=256, sgd_epochs=1,
                          sgd_lr=0.01, lora_rank=2, lora_chunk=8, lora_docs_per_batch=8, lora_lr=0.01)
        results[m] = evaluate(model, vs, ecfg, CPU, seq_len=32, max_tokens=800)
    assert {r["val_tokens"] for r in results.values()} == {800}
    assert len({r["val_bytes"] for r in results.values()}) == 1
    assert all(math.isfinite(r["val_bpb"]) and r["method"] == m for m, r in results.items())
    # TTT adapts a copy: the caller's model (the one that ships) is unchanged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert results["ttt_sgd"]["val_loss"] != results["sliding"]["val_loss"]


def test_non_finite_score_is_an_error(vs, small_model):
    model = small_model()
    with torch.no_grad():
        model.tok_emb.weight[5] = float("nan")
    with pytest.raises(NonFiniteScoreError, match="not finite"):
        evaluate(model, vs, EvalConfig(method="sliding", stride=16), CPU, seq_len=32, max_tokens=400)
    assert issubclass(NonFiniteScoreError, ValueError)


def test_recipe_is_validated_and_travels_in_the_run_config():
    cfg = RunConfig()
    cfg.override(["eval.method=ttt_sgd", "eval.sgd_lr=0.01", "eval.stride=128"])
    back = RunConfig.from_json(cfg.validate().to_json())
    assert back.eval == cfg.eval and back.eval.method == "ttt_sgd" and back.eval.sgd_lr == 0.01
    old = RunConfig.from_dict({"eval": {"batch_tokens": 1024, "max_tokens": 0}})  # older artifacts
    assert old.eval.method == "plain"
    for bad, msg in [("method=best", "eval.method='best'"), ("stride=2000", "eval.stride=2000"),
                     ("sgd_momentum=1.0", "sgd_momentum"), ("lora_chunk=0", "lora_chunk")]:
        c = RunConfig()
        c.override(["eval.method=sliding", f"eval.{bad}"])
        with pytest.raises(ConfigError, match=msg):
            c.validate()


@pytest.fixture(scope="module")
def case_val(tmp_path_factory, make_docs, make_case_shards):
    d = tmp_path_factory.mktemp("case_eval")
    docs = make_docs(12, seed=4) + ["NASA and iPhone: ALL CAPS McDonald"]
    tok = make_case_shards(d, docs)
    return str(d / "*_val_*.bin"), tok, docs


@pytest.mark.parametrize("method", EVAL_METHODS)
def test_case_transformed_shards_report_original_utf8_bytes(case_val, small_model, method):
    """Issue 16 finding 1: every evaluator counts the sidecar's bytes, not the operator pieces'."""
    from loopgolf.data.valset import load_val_set

    pattern, tok, docs = case_val
    vs = load_val_set(pattern, tok, 512)
    seq = len(vs) - 1  # one window: the whole stream is scored
    ecfg = EvalConfig(method=method, stride=seq // 4, batch_tokens=seq, sgd_chunk_tokens=seq // 2,
                      sgd_epochs=1, lora_rank=2, lora_chunk=16, lora_docs_per_batch=4)
    res = evaluate(small_model(), vs, ecfg, CPU, seq_len=seq)
    assert res["bytes_source"] == "sidecar"
    assert res["val_bytes"] == sum(len(d.encode("utf-8")) for d in docs)


_WORKER = r'''
import json, sys
import torch
from loopgolf import dist
from loopgolf.config import ModelConfig, EvalConfig
from loopgolf.data.valset import load_val_set
from loopgolf.eval.recipe import evaluate
from loopgolf.lab.legality import check_behaviour
from loopgolf.model.gpt import GPT

pattern, tok, out = sys.argv[1:4]
torch.set_flush_denormal(True)
dist.init("cpu")
torch.manual_seed(0)
model = GPT(ModelConfig(vocab_size=512, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="2"))
for p in model.parameters():
    torch.nn.init.normal_(p, std=0.05)
vs = load_val_set(pattern, tok, 512).head(1201)
res = {}
for m in ("plain", "sliding", "ttt_sgd", "ttt_lora", "mixture"):
    e = EvalConfig(method=m, stride=16, batch_tokens=32 * 6, sgd_chunk_tokens=256, sgd_epochs=1,
                   sgd_lr=0.02, sgd_batch_seqs=5, lora_rank=2, lora_chunk=8, lora_docs_per_batch=8,
                   lora_lr=0.01, lora_phases=1, lora_phase_batch_seqs=5)
    res[m] = evaluate(model, vs, e, torch.device("cpu"), 32)
mix = EvalConfig(method="mixture", stride=16, batch_tokens=32 * 6, mix_eta=1e-3)
rep = check_behaviour(lambda v, lg: evaluate(model, v, mix, torch.device("cpu"), 32, log=lg),
                      vs.head(577), 577, seed=3, perturbations=4, phase="mixture")
res["mixture_behaviour"] = {"ok": rep["ok"], "problems": rep["problems"]}
if dist.info().is_main:
    json.dump(res, open(out, "w"))
dist.cleanup()
'''


@pytest.mark.slow
@pytest.mark.dist
def test_scores_do_not_depend_on_the_world_size(tiny_shards, tmp_path):
    """Issue 16 findings 3 and 5: every method gives the same bpb on 1, 2 and 3 gloo ranks, and the
    mixture's distributions stay causal across rank boundaries."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    pattern = str(tiny_shards["dir"] / "*_val_*.bin")
    results = {}
    for world in (1, 2, 3):
        out = tmp_path / f"w{world}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               str(script), pattern, str(tiny_shards["tokenizer"]), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[world] = json.loads(out.read_text())
    for world in (2, 3):
        assert results[world]["mixture_behaviour"]["ok"], results[world]["mixture_behaviour"]
        for m in ("plain", "sliding", "ttt_sgd", "ttt_lora", "mixture"):
            a, b = results[1][m], results[world][m]
            assert a["val_tokens"] == b["val_tokens"] and a["val_bytes"] == b["val_bytes"]
            assert b["val_bpb"] == pytest.approx(a["val_bpb"], rel=1e-12, abs=0), (m, world, a["val_bpb"], b["val_bpb"])
    assert results[3]["ttt_lora"]["phases_run"] == 1
