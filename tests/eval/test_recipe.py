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
