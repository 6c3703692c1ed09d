"""Transformer pieces of the challenge baseline: rotary attention with QK-norm and q gain, MLPs, Block.

Shapes follow the baseline `train_gpt.py` (techniques.md section 2.1): RMSNorm without weights,
GQA attention with full RoPE and per-head `q_gain`, ReLU^2 MLP, per-block `attn_scale`,
`mlp_scale` and `resid_mix` (mixing the running residual with x0, the normalized embedding), and
zero-initialized output projections so every block starts as the identity. Parameter names are an
API: the optimizer table (train/optim.py) and the quantization table (compress/quant.py) match them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE over the full head dimension (baseline: base 10000, all 64 dims)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Recomputed each call: a T x D/2 outer product is free next to attention, and stateless
        # code keeps torch.compile free of guards on a Python-side cache.
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        return freqs.cos()[None, None], freqs.sin()[None, None]  # (1,1,T,D/2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


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
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        k = self.c_k(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


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
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLPS[cfg.mlp](cfg)
        self.attn_scale = nn.Parameter(torch.ones(cfg.dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.dim))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(cfg.dim), torch.zeros(cfg.dim)]))

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))
