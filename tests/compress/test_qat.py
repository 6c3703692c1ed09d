"""QAT parametrizations: STE forward on the grid with a straight-through gradient, noisy QAT,
late switch-on, and removal restoring the plain weights and names."""
from __future__ import annotations

import torch
from torch import nn

from loopgolf.compress.qat import apply_qat, plain_state_dict, remove_qat, set_qat_enabled
from loopgolf.config import QuantConfig


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(32, 32, bias=False)
        self.head = nn.Linear(32, 4, bias=False)  # 128 elements: small, stays float


def test_ste_forward_and_straight_through_gradient() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.mlp.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    names = apply_qat(net, QuantConfig(scheme="int4_row", passthrough_max_numel=256), mode="ste")
    assert names == ["mlp.weight"]
    w = net.mlp.weight
    scale = raw.abs().amax(dim=1, keepdim=True) / 7
    assert torch.allclose(w, torch.clamp(torch.round(raw / scale), -7, 7) * scale)
    assert len(torch.unique(torch.round(w / scale))) <= 15
    c = torch.randn(32, 32)
    (w * c).sum().backward()
    original = net.mlp.parametrizations["weight"].original
    assert torch.allclose(original.grad, c)  # straight through
    opt.step()  # the optimizer built before QAT still updates the same Parameter
    assert not torch.equal(original.detach(), raw)
    set_qat_enabled(net, False)
    assert torch.equal(net.mlp.weight, original)
    assert set(plain_state_dict(net)) == {"mlp.weight", "head.weight"}
    remove_qat(net)
    assert set(net.state_dict()) == {"mlp.weight", "head.weight"}
    assert torch.equal(net.mlp.weight, original.detach())


def test_noise_only_in_training() -> None:
    torch.manual_seed(0)
    net = Net()
    raw = net.mlp.weight.detach().clone()
    apply_qat(net, QuantConfig(scheme="int6_row", passthrough_max_numel=256), mode="noise")
    step = raw.abs().amax(dim=1, keepdim=True) / 31
    diff = net.mlp.weight.detach() - raw
    assert bool((diff.abs() <= step / 2 + 1e-7).all()) and float(diff.abs().max()) > 0
    net.eval()
    assert torch.equal(net.mlp.weight, raw)
