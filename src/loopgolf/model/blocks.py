"""Transformer pieces: rotary attention with QK-norm and q gain, MLPs, and the Block.

Defaults reproduce the challenge baseline (techniques.md 2.1): RMSNorm without weights, GQA attention
with full RoPE and per-head `q_gain`, ReLU^2 MLP, per-block `attn_scale`, `mlp_scale` and `resid_mix`
(mixing the running residual with x0, the normalized embedding), zero-initialized output projections
so every block starts as the identity. Options that the records use are decided at construction or
come in through the per-virtual-layer `LayerSpec` (model/recurrence.py), so a block shared by several
virtual layers can, e.g., use XSA on its last visit only. Parameter names are an API: the optimizer
table (train/optim.py) and the quantization table (compress/quant.py) match them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.recurrence import LayerSpec


def attention_backend(device_type: str) -> str:
    """Which attention kernel runs, for the run log. FlashAttention-3 (`flash_attn_interface`) is used
    by the records on H100; when it is not importable, SDPA picks its flash kernel on CUDA."""
    import importlib.util

    if device_type != "cuda":
        return "sdpa (cpu math kernel)"
    if importlib.util.find_spec("flash_attn_interface") is not None:
        return "sdpa (flash_attn_interface is importable, but loopgolf routes attention through SDPA)"
    return "sdpa (flash backend; flash_attn_interface not importable)"


# Optional zero-padding of head dims to a multiple of this before SDPA on CUDA (0 = off), with the
# softmax scale of the true head dim; the padded dims add 0 to q.k and their outputs are sliced off.
# Off: eager SDPA already pads head dim 110 (seed-shared-3x4) itself, and under torch.compile the
# explicit pad gave larger XSA input-gradient error at head dim 110 (bench/scripts/compile_check.py).
SDPA_PAD_MULTIPLE = 0


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA over (B, H, T, D) q and (B, KV, T, D) k, v (GQA when KV < H)."""
    hd = q.size(-1)
    pad = (-hd) % SDPA_PAD_MULTIPLE if (q.is_cuda and SDPA_PAD_MULTIPLE) else 0
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=hd ** -0.5,
                                       enable_gqa=k.size(1) != q.size(1))
    return y[..., :hd] if pad else y


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE over the first `dims` dims of each head (baseline: all 64; records: 16, partial RoPE)."""

    def __init__(self, dims: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cos/sin recomputed per call: a T x D/2 outer product is free next to attention, and
        # stateless code keeps torch.compile free of guards on a Python-side cache.
        T = x.size(-2)
        freqs = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), self.inv_freq)
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)  # (T, dims/2)
        rot, rest = x[..., :self.dims], x[..., self.dims:]
        d = self.dims // 2
        x1, x2 = rot[..., :d], rot[..., d:]
        rot = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
        return torch.cat((rot, rest), dim=-1) if rest.size(-1) else rot


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        kv_dim = self.n_kv * self.head_dim
        self.c_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.c_k = nn.Linear(cfg.dim, kv_dim, bias=False)
        self.c_v = nn.Linear(cfg.dim, kv_dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_gain = nn.Parameter(torch.full((cfg.n_heads,), cfg.qk_gain_init))
        self.rotary = Rotary(cfg.rope_dims or self.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor, spec: LayerSpec, v_extra: torch.Tensor | None = None,
                lora: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        if lora is not None:  # this virtual layer's own low-rank deltas: W x + B (A x)
            q, k, v = (t + (x @ a.to(x.dtype).mT) @ b.to(x.dtype).mT
                       for t, a, b in zip((q, k, v), lora[0:6:2], lora[1:6:2]))
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B,KV,T,D)
        if v_extra is not None:  # value embedding injected into V (record (a) L318-326)
            v = v + v_extra
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = causal_attention(q, k, v)
        if spec.xsa:
            # XSA: remove the component along the token's own normalized value (record (c) L393-400)
            vh = F.normalize(v, dim=-1).repeat_interleave(self.n_heads // self.n_kv, dim=1)
            y = y - (y * vh).sum(-1, keepdim=True) * vh
        y = y.transpose(1, 2).reshape(B, T, C)
        out = self.proj(y)
        if lora is not None:
            out = out + (y @ lora[6].to(y.dtype).mT) @ lora[7].to(y.dtype).mT
        return out


class ReluSquaredMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, negative_slope: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, self.negative_slope) if self.negative_slope else F.relu(h)
        return self.proj(h.square())


class SwiGLUMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, 2 * cfg.mlp_hidden, bias=False)  # gate and up, fused
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


MLPS = {
    "relu2": lambda cfg: ReluSquaredMLP(cfg),
    "leaky_relu2": lambda cfg: ReluSquaredMLP(cfg, negative_slope=0.5),  # record (c) L429
    "swiglu": SwiGLUMLP,
}


class Block(nn.Module):
    """One physical block. Its residual controls (attn_scale, mlp_scale, resid_mix) live here unless
    model.per_layer_scales moves them to one set per virtual layer (PR #927), in which case the GPT
    passes them in."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLPS[cfg.mlp](cfg)
        if not cfg.per_layer_scales:
            self.attn_scale = nn.Parameter(torch.ones(cfg.dim))
            self.mlp_scale = nn.Parameter(torch.ones(cfg.dim))
            self.resid_mix = nn.Parameter(torch.stack([torch.ones(cfg.dim), torch.zeros(cfg.dim)]))

    def controls(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.attn_scale, self.mlp_scale, self.resid_mix

    def forward(self, x: torch.Tensor, x0: torch.Tensor, spec: LayerSpec,
                controls: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                v_extra: torch.Tensor | None = None, mlp: nn.Module | None = None,
                lora: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        attn_scale, mlp_scale, mix = (c.to(x.dtype) for c in controls)
        mlp = self.mlp if mlp is None else mlp
        x = mix[0] * x + mix[1] * x0
        h = rms_norm(x)
        if spec.ln_scale != 1.0:
            h = h * spec.ln_scale
        a = attn_scale * self.attn(h, spec, v_extra, lora)
        if spec.parallel:  # GPT-J single-lane parallel residual (record (d) L109-113)
            return x + a + mlp_scale * mlp(h)
        x = x + a
        h = rms_norm(x)
        if spec.ln_scale != 1.0:
            h = h * spec.ln_scale
        return x + mlp_scale * mlp(h)
