"""Check every SDPA backend against a float64 reference (forward and input gradients), GQA + causal,
for the head dims loopgolf presets use. Prints one line per (head_dim, backend)."""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
for hd, H, KV in ((64, 8, 4), (110, 8, 4), (32, 32, 8), (64, 8, 1)):
    q = torch.randn(4, H, 512, hd, device="cuda")
    k = torch.randn(4, KV, 512, hd, device="cuda")
    v = torch.randn(4, KV, 512, hd, device="cuda")
    g = torch.randn(4, H, 512, hd, device="cuda")
    def run(dtype, backend=None):
        qq, kk, vv = (t.to(dtype).requires_grad_() for t in (q, k, v))
        ctx = sdpa_kernel([backend]) if backend is not None else torch.enable_grad()
        with ctx:
            y = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
        (y.float() * g).sum().backward()
        return [t.double() for t in (y, qq.grad, kk.grad, vv.grad)]
    ref = run(torch.float64, SDPBackend.MATH)
    for b in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            out = run(torch.bfloat16, b)
            errs = [((o - r).norm() / r.norm()).item() for o, r in zip(out, ref)]
            print(f"hd={hd} H={H} KV={KV} backend={b.name if b else 'default'} rel_err y/dq/dk/dv = " + " ".join(f"{e:.2e}" for e in errs), flush=True)
        except Exception as e:
            print(f"hd={hd} H={H} KV={KV} backend={b.name if b else 'default'} unavailable: {str(e).splitlines()[0][:100]}", flush=True)
