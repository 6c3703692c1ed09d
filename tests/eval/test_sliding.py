import pytest
import torch

from loopgolf.eval.bpb import evaluate_bpb, usable_tokens, window_plan
from loopgolf.eval.sliding import evaluate_sliding, new_log
from loopgolf.lab.legality import check_events

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("flush_denormals")




def test_window_plan_tiles_every_target_once():
    for n, ctx, stride in [(33, 8, 8), (33, 8, 3), (101, 16, 5), (17, 16, 1)]:
        plan = window_plan(n, ctx, stride)
        assert plan[0, 1] == 1 and plan[-1, 2] == n
        assert (plan[1:, 1] == plan[:-1, 2]).all()
        assert (plan[:, 0] >= 0).all() and (plan[:, 0] + ctx + 1 <= n).all()
        assert (plan[:, 1] >= plan[:, 0] + 1).all()  # scored targets lie inside the window
    assert window_plan(33, 8, 8).tolist() == [[0, 1, 9], [8, 9, 17], [16, 17, 25], [24, 25, 33]]


def test_stride_equal_to_seq_len_is_plain_eval(val, vs, small_model):
    tokens, luts = val
    model = small_model()
    plain = evaluate_bpb(model, tokens, luts, 32, batch_seqs=8, device=CPU)
    log = new_log("sliding", usable_tokens(len(tokens), 32))
    slide = evaluate_sliding(model, vs, 32, 32, batch_seqs=8, device=CPU, log=log)
    assert slide["val_tokens"] == plain["val_tokens"] and slide["val_bytes"] == plain["val_bytes"]
    assert slide["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
    assert slide["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-6)
    assert check_events(log, log.n_tokens)["ok"]


def test_smaller_stride_scores_same_targets_with_more_context(val, vs, small_model):
    tokens, luts = val
    model = small_model()
    n = usable_tokens(len(tokens), 32, max_tokens=1500)
    log = new_log("sliding", n)
    plain = evaluate_bpb(model, tokens, luts, 32, 8, CPU, max_tokens=1500)
    slide = evaluate_sliding(model, vs, 32, 8, batch_seqs=16, device=CPU, max_tokens=1500, log=log)
    assert slide["val_tokens"] == plain["val_tokens"] == n - 1
    assert slide["val_bytes"] == plain["val_bytes"]
    rep = check_events(log, log.n_tokens)
    assert rep["ok"] and rep["scored"] == n - 1


def test_bad_stride_is_refused():
    with pytest.raises(ValueError, match="stride"):
        window_plan(100, 16, 17)
