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
        errs = sorted(((rel(out[1][1][n], out[0][1][n]), n) for n in out[0][1]), reverse=True)
        missing = sorted(set(out[0][1]) ^ set(out[1][1]))
        print(f"gpt {overrides} stage={stage}: loss eager {out[0][0]:.5f} compiled {out[1][0]:.5f}; "
              f"worst grads " + ", ".join(f"{n} {e:.2e}" for e, n in errs[:8])
              + f"; median {errs[len(errs) // 2][0]:.2e}" + (f"; grad only in one: {missing}" if missing else ""),
              flush=True)


def check_steps(overrides, steps=12):
    """The real trainer's optimizers (Muon + Adam) on eager and compiled copies from one init, one
    fixed batch: if one-step gradients agree but training diverges, this shows at which step."""
    import copy
    from loopgolf.presets import get_preset
    from loopgolf.train.optim import build_optimizers
    cfg = get_preset("seed-shared-3x4").override(overrides)
    torch.manual_seed(0)
    base = GPT(cfg.model).cuda()
    idx = torch.randint(0, 1024, (8, 1024), device="cuda")
    losses = {}
    for mode in ("eager", "compiled"):
        m = copy.deepcopy(base)
        fn = torch.compile(m, dynamic=False) if mode == "compiled" else m
        opts = build_optimizers(m, cfg.optim, cfg.model, fused=True)
        losses[mode] = []
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(idx, idx).mean()
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            losses[mode].append(round(loss.item(), 4))
    print(f"steps {overrides}: eager {losses['eager']}\n      compiled {losses['compiled']}", flush=True)


def patch_xsa(mode):
    """Candidate workarounds for the compiled XSA at head dim 110: run it eager (a graph break),
    zero-pad the head dim to a multiple of 8 around it, or compute it in fp32."""
    from loopgolf.model.attention_tricks import XSA
    orig = XSA.__call__
    if mode == "eager":
        XSA.__call__ = torch.compiler.disable(orig)
    elif mode == "pad":
        def padded(self, y, v, x=None):
            d = y.size(-1)
            pad = (-d) % 8
            return orig(self, F.pad(y, (0, pad)), F.pad(v, (0, pad)), x)[..., :d] if pad else orig(self, y, v, x)
        XSA.__call__ = padded
    elif mode == "fp32":
        XSA.__call__ = lambda self, y, v, x=None: orig(self, y.float(), v.float(), x).to(y.dtype)
    print(f"XSA mode: {mode}", flush=True)


if __name__ == "__main__":
    for a in sys.argv:
        if a.startswith("--xsa="):
            patch_xsa(a.split("=", 1)[1])
    if "--steps" in sys.argv:
        check_steps(["model.plan_stages=3x2@0.5", "model.plan=3x2"])
        check_steps(["model.plan_stages=3x2@0.5", "model.plan=3x2", "model.dim=768", "model.mlp_hidden=2304"])
    elif "--gpt" in sys.argv:
        variants = ([], ["model.value_embeds=0"], ["model.loop_embed=false"], ["model.cross_repeat=false"],
                    ["model.xsa_last=0"], ["model.mlp_hidden=2304"],
                    ["model.value_embeds=0", "model.loop_embed=false", "model.cross_repeat=false"],
                    ["model.dim=768", "model.mlp_hidden=2304"])
        only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
        for i, extra in enumerate(variants):
            if only and str(i) not in only[0].split(","):
                continue
            check_gpt(["model.plan_stages=3x2@0.5", "model.plan=3x2", *extra])
    else:
        for pad in (0, 8):
            blocks.SDPA_PAD_MULTIPLE = pad
            for dim, heads, kv in ((880, 8, 4), (768, 8, 4)):
                for xsa in (False, True):
                    check_attention(dim, heads, kv, xsa)
