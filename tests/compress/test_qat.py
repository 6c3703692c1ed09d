"""QAT parametrizations: the STE forward weight is exactly the exporter's dequantize(quantize(w)) for
every row-grid scheme and clip, with a straight-through gradient; noisy QAT at the exporter's step;
late switch-on; training-only and small tensors untouched; removal restores the plain weights."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from loopgolf.compress.qat import apply_qat, plain_state_dict, remove_qat, set_qat_enabled
from loopgolf.compress.quant import QUANTIZERS
from loopgolf.config import QuantConfig


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].mlp = nn.Module()
        self.blocks[0].mlp.fc = nn.Linear(48, 32, bias=False)  # 1,536 elements: on a row grid
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.c_q = nn.Linear(32, 4, bias=False)  # 128 elements: small, stays float
        self.mtp_heads = nn.ModuleList([nn.Module()])
        self.mtp_heads[0].proj = nn.Linear(48, 32, bias=False)  # training-only: never fake-quantized

    @property
    def fc(self) -> nn.Linear:
        return self.blocks[0].mlp.fc


NAMES = {"blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight", "mtp_heads.0.proj.weight"}
Q = QuantConfig(passthrough_max_numel=256)


def outliers(w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        w[3, 7] = 0.9  # an outlier for the clips to cut
        w[5] = 0.0  # an all-zero row: the row_scale_min / fp16 floor
    return w


@pytest.mark.parametrize("scheme", [f"int{b}_row" for b in range(2, 9)] + ["ternary_row", "q16_row", "q63_row"])
@pytest.mark.parametrize("clip", ["percentile", "search", "sdclip"])
@pytest.mark.parametrize("floor", [1.0 / 127.0, 0.0])
def test_ste_weight_is_the_exported_weight_bit_for_bit(scheme: str, clip: str, floor: float) -> None:
    torch.manual_seed(0)
    net = Net()
    outliers(net.fc.weight)
    raw = net.fc.weight.detach().clone()
    qcfg = dataclasses.replace(Q, scheme=scheme, clip=clip, row_scale_min=floor, sdclip_k=2.5)
    assert apply_qat(net, qcfg, mode="ste") == ["blocks.0.mlp.fc.weight"]
    q = QUANTIZERS[scheme]
    exported = q.dequantize(q.quantize(raw, qcfg), tuple(raw.shape))
    assert torch.equal(net.fc.weight, exported)


def test_bits_rules_pick_the_fake_quant_grid() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.fc.weight.detach().clone()
    qcfg = dataclasses.replace(Q, bits_rules="mlp=ternary_row,attn=6")
    apply_qat(net, qcfg, mode="ste")
    assert set(torch.unique(net.fc.weight / raw.abs().mean(dim=1, keepdim=True).half().float()
                            ).round().tolist()) <= {-1.0, 0.0, 1.0}
    t = QUANTIZERS["ternary_row"]
    assert torch.equal(net.fc.weight, t.dequantize(t.quantize(raw, qcfg), tuple(raw.shape)))


def test_ste_straight_through_gradient_and_removal() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.fc.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    qcfg = dataclasses.replace(Q, scheme="int4_row")
    apply_qat(net, qcfg, mode="ste")
    w = net.fc.weight
    assert len(torch.unique(w)) < len(torch.unique(raw))
    c = torch.randn(32, 48)
    (w * c).sum().backward()
    original = net.fc.parametrizations["weight"].original
    assert torch.allclose(original.grad, c)  # straight through
    opt.step()  # the optimizer built before QAT still updates the same Parameter
    assert not torch.equal(original.detach(), raw)
    set_qat_enabled(net, False)
    assert torch.equal(net.fc.weight, original)
    assert set(plain_state_dict(net)) == NAMES
    remove_qat(net)
    assert set(net.state_dict()) == NAMES
    assert torch.equal(net.fc.weight, original.detach())


def test_noise_is_one_exported_step_and_only_in_training() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.fc.weight.detach().clone()
    qcfg = dataclasses.replace(Q, scheme="int6_row", clip="sdclip", sdclip_k=3.0, row_scale_min=0.0)
    apply_qat(net, qcfg, mode="noise")
    step = torch.from_numpy(QUANTIZERS["int6_row"].quantize(raw, qcfg)["scale"]).float()[:, None]
    diff = net.fc.weight.detach() - raw
    assert bool((diff.abs() <= step / 2 + 1e-7).all()) and float((diff.abs() / step).max()) > 0.4
    net.eval()
    assert torch.equal(net.fc.weight, raw)
