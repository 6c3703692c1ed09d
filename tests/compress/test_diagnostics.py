"""Diagnostics: the per-tensor error report and the bpb gap with a stand-in eval function."""
from __future__ import annotations

import torch
from torch import nn

from loopgolf.compress.diagnostics import bpb_gap, format_error_report, quant_error_report
from loopgolf.config import QuantConfig


def test_error_report_ranks_tensors_and_is_exact_where_exact() -> None:
    g = torch.Generator().manual_seed(0)
    state = {"blocks.0.attn.c_q.weight": torch.randn(64, 64, generator=g),
             "blocks.0.mlp.fc.weight": torch.randn(64, 64, generator=g),
             "blocks.0.attn_scale": torch.randn(8, generator=g), "step": torch.tensor(3),
             "mtp_heads.0.proj.weight": torch.randn(64, 64, generator=g)}  # training-only: not listed
    qcfg = QuantConfig(passthrough_max_numel=100, bits_rules="attn=3,mlp=8", row_scale_min=0.0)
    rows = quant_error_report(state, qcfg)
    assert [r["name"] for r in rows] == ["blocks.0.attn.c_q.weight", "blocks.0.mlp.fc.weight",
                                         "blocks.0.attn_scale"]
    assert rows[0]["scheme"] == "int3_row" and rows[0]["rel_rmse"] > 5 * rows[1]["rel_rmse"] > 0
    assert rows[2]["rel_rmse"] == 0.0 and rows[2]["scheme"] == "fp32"
    assert "int3_row" in format_error_report(rows)


def test_bpb_gap_uses_the_quantized_weights() -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.bigram = nn.Module()
    model.bigram.proj = nn.Linear(64, 64, bias=False)
    ref = model.bigram.proj.weight.detach().clone()

    def eval_fn(m: nn.Module) -> dict:  # stand-in "bpb": distance to the float weights
        return {"val_bpb": float((m.bigram.proj.weight.detach() - ref).norm())}

    coarse = bpb_gap(model, QuantConfig(scheme="int3_row", passthrough_max_numel=1, row_scale_min=0), eval_fn)
    fine = bpb_gap(model, QuantConfig(scheme="int8_row", passthrough_max_numel=1, row_scale_min=0), eval_fn)
    assert coarse["pre"] == fine["pre"] == 0.0 and coarse["gap"] > fine["gap"] > 0
    assert torch.equal(model.bigram.proj.weight.detach(), ref)  # the model itself is untouched


def test_progress_is_the_plain_iterable_without_a_terminal(monkeypatch) -> None:
    import io
    import sys

    from loopgolf.compress.diagnostics import progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a TTY
    items = [3, 1, 2]
    assert progress(items, "x") is items

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(progress(items, "gptq")) == items  # same items, in order, with a bar
    assert "gptq" in tty.getvalue()
