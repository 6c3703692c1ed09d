"""QatWeights: the STE forward weight is exactly the exporter's dequantize(quantize(w)) for every
row-grid scheme and clip, with a straight-through gradient, and the float weight is back afterwards
(also after an error); noisy QAT at the exporter's step; late switch-on; training-only and small
tensors untouched; removal restores the plain weights; STE QAT does not change a compiled graph."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from loopgolf.compress.qat import QatWeights, plain_state_dict
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
    qat = QatWeights(net, qcfg, mode="ste")
    assert qat.names == ["blocks.0.mlp.fc.weight"]
    q = QUANTIZERS[scheme]
    exported = q.dequantize(q.quantize(raw, qcfg), tuple(raw.shape))
    with qat.applied():
        assert torch.equal(net.fc.weight, exported)
    assert torch.equal(net.fc.weight, raw)


def test_bits_rules_pick_the_fake_quant_grid() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.fc.weight.detach().clone()
    qcfg = dataclasses.replace(Q, bits_rules="mlp=ternary_row,attn=6")
    with QatWeights(net, qcfg, mode="ste").applied():
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
    qat = QatWeights(net, qcfg, mode="ste")
    c = torch.randn(32, 48)
    with qat.applied():
        w = net.fc.weight
        assert len(torch.unique(w)) < len(torch.unique(raw))
        wq = w.detach().clone()
        (w * c).sum().backward()
    assert torch.equal(net.fc.weight.grad, c)  # straight through: d/dw of sum(wq * c) is c
    assert torch.equal(net.fc.weight, raw)  # the optimizer steps the float weight
    opt.step()  # the optimizer built before QAT updates the same Parameter
    stepped = net.fc.weight.detach().clone()
    assert torch.allclose(stepped, raw - 0.1 * c, atol=1e-6)
    with qat.applied():
        assert not torch.equal(net.fc.weight, wq)  # the grid follows the weight
    qat.set_enabled(False)
    with qat.applied():
        assert torch.equal(net.fc.weight, stepped)
    assert set(plain_state_dict(net)) == set(net.state_dict()) == NAMES  # no renaming
    qat.remove()
    assert qat.names == [] and not qat.on and set(net.state_dict()) == NAMES


def test_ste_restores_the_float_weights_after_an_error() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.fc.weight.detach().clone()
    qat = QatWeights(net, dataclasses.replace(Q, scheme="int4_row"), mode="ste")
    with pytest.raises(RuntimeError, match="out of memory"):
        with qat.applied():
            with qat.applied():  # nested (a check inside a step): the outer one restores, once
                assert not torch.equal(net.fc.weight, raw)
            assert not torch.equal(net.fc.weight, raw)
            raise RuntimeError("CUDA out of memory (stand-in)")
    assert torch.equal(net.fc.weight, raw)


def test_ste_qat_switches_without_a_new_compiled_graph() -> None:
    """QAT on late is the same graph as QAT off (issue 15: on seed-loop45 the two parametrized QAT
    graphs took 37 s of a fully cached 59.5 s warm-up)."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    net = Net()
    qat = QatWeights(net, dataclasses.replace(Q, scheme="int4_row"), mode="ste", enabled=False)
    fn = torch.compile(lambda x: net.fc(x).square().sum(), backend=counting_backend, dynamic=False)
    torch._dynamo.reset()
    x = torch.randn(3, 48)
    with qat.applied():
        off = fn(x)
    qat.set_enabled(True)
    with qat.applied():
        on = fn(x)
        want = (x @ net.fc.weight.detach().T).square().sum()
    assert len(graphs) == 1 and not qat.separate_graphs
    assert not torch.equal(off, on) and torch.allclose(on, want)


def test_noise_is_one_exported_step_and_only_in_training() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.fc.weight.detach().clone()
    qcfg = dataclasses.replace(Q, scheme="int6_row", clip="sdclip", sdclip_k=3.0, row_scale_min=0.0)
    qat = QatWeights(net, qcfg, mode="noise")
    assert qat.separate_graphs and set(plain_state_dict(net)) == NAMES != set(net.state_dict())
    step = torch.from_numpy(QUANTIZERS["int6_row"].quantize(raw, qcfg)["scale"]).float()[:, None]
    diff = net.fc.weight.detach() - raw
    assert bool((diff.abs() <= step / 2 + 1e-7).all()) and float((diff.abs() / step).max()) > 0.4
    net.eval()
    assert torch.equal(net.fc.weight, raw)
    qat.remove()
    assert set(net.state_dict()) == NAMES and torch.equal(net.fc.weight, raw)
