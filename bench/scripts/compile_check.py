"""Compiled vs eager on CUDA, bf16: one attention layer and the whole GPT, per head dim.

Found while chasing the seed-shared-3x4 divergence (issue 3): the preset trains in eager mode and
diverges under torch.compile. This prints, for each case, the relative error of the output and of
the input/parameter gradients of the compiled module against eager (both bf16 autocast) and
against a float64 eager reference.
"""
import sys

import torch
import torch.nn.functional as F

from loopgolf.config import ModelConfig
from loopgolf.model import blocks
from loopgolf.model.gpt import GPT


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_attention(dim, heads, kv, xsa):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=dim, n_heads=heads, n_kv_heads=kv, plan="1", xsa_last=-1 if xsa else 0)
    model = GPT(cfg).cuda()
    att, layer = model.blocks[0].attn, model._stage_layers[-1][0]  # the one virtual layer's wiring
    x = torch.randn(8, 1024, dim, device="cuda")
    g = torch.randn(8, 1024, dim, device="cuda")

    def run(fn, dtype=None):
        xx = x.clone().requires_grad_()
        att.zero_grad()
        if dtype is None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = fn(xx, None, layer)
        else:
            y = fn(xx.to(dtype), None, layer)
        (y.double() * g.double()).sum().backward()
        return [y.detach(), xx.grad.detach(), att.c_q.weight.grad.detach().clone()]

    comp = torch.compile(att, dynamic=False)
    e = run(att)
    c = run(comp)
    att.double()
    r = run(att, torch.float64)
    att.float()
    print(f"attention pad={blocks.SDPA_PAD_MULTIPLE} dim={dim} hd={dim // heads} xsa={xsa}: compiled-vs-eager y/dx/dWq = "
          + " ".join(f"{rel(a, b):.2e}" for a, b in zip(c, e)) + " | eager-vs-fp64 "
          + " ".join(f"{rel(a, b):.2e}" for a, b in zip(e, r)) + " | compiled-vs-fp64 "
          + " ".join(f"{rel(a, b):.2e}" for a, b in zip(c, r)), flush=True)


def check_gpt(overrides):
    torch.manual_seed(0)
    from loopgolf.presets import get_preset
    cfg = get_preset("seed-shared-3x4").override(overrides)
    m = GPT(cfg.model).cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, 1024, (8, 1024), device="cuda")
    comp = torch.compile(m, dynamic=False)
    for stage in range(len(m.stages)):
        if stage != len(m.stages) - 1 and "model.plan=3x2" in overrides:
            continue
        out = []
        for fn in (m, comp):
            m.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(idx, idx, stage=stage).mean()
            loss.backward()
            out.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        worst = sorted(((rel(out[1][1][n], out[0][1][n]), n) for n in out[0][1]), reverse=True)[:3]
        print(f"gpt {overrides} stage={stage}: loss eager {out[0][0]:.5f} compiled {out[1][0]:.5f}; "
              f"worst grads " + ", ".join(f"{n} {e:.2e}" for e, n in worst), flush=True)


if __name__ == "__main__":
    if "--gpt" in sys.argv:
        for extra in ([], ["model.xsa_last=0"], ["model.mlp_hidden=2304"],
                      ["model.value_embeds=0", "model.loop_embed=false", "model.cross_repeat=false"],
                      ["model.dim=768", "model.mlp_hidden=2304"]):
            check_gpt(["model.plan_stages=3x2@0.5", "model.plan=3x2", *extra])
    else:
        for pad in (0, 8):
            blocks.SDPA_PAD_MULTIPLE = pad
            for dim, heads, kv in ((880, 8, 4), (768, 8, 4)):
                for xsa in (False, True):
                    check_attention(dim, heads, kv, xsa)
