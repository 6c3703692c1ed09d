"""Transformer pieces: rotary attention with QK-norm and q gain, MLPs, and the Block.

Defaults reproduce the challenge baseline (techniques.md 2.1): RMSNorm without weights, GQA attention
with full RoPE and per-head `q_gain`, ReLU^2 MLP, per-block `attn_scale`, `mlp_scale` and `resid_mix`
(mixing the running residual with x0, the normalized embedding), zero-initialized output projections
so every block starts as the identity. A block runs as one virtual layer at a time: `Block.forward(x,
ctx, layer)` takes the layer's wiring (model/wiring.py), whose ops (LoRA, V-injection, XSA, LN scale,
parallel residual, per-layer scales, repeat MLPs) were chosen at construction, so a block shared by
several virtual layers can, e.g., use XSA on its last visit only. model.block=plain_prenorm picks
PlainBlock instead (PR #29: learned-weight pre-norms, nothing else). Parameter names are an API: the
optimizer table (train/optim.py) and the quantization table (compress/quant.py) match them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig


def attention_backend(device_type: str) -> str:
    """Which attention kernels SDPA may pick, for the run log. It takes the first enabled one that
    supports the inputs; on the H200 with torch 2.11 that is cuDNN's flash attention (the profile in
    bench/results/2026-12-01_profile_h200; PyTorch's FA2 was 15 % slower per baseline step).
    FlashAttention-3 (`flash_attn_interface`) is not used for dense attention even when importable."""
    if device_type != "cuda":
        return "sdpa (cpu math kernel)"
    b = torch.backends.cuda
    enabled = [name for name, on in (("cudnn", b.cudnn_sdp_enabled()), ("flash", b.flash_sdp_enabled()),
                                     ("efficient", b.mem_efficient_sdp_enabled()), ("math", b.math_sdp_enabled())) if on]
    return f"sdpa (enabled: {', '.join(enabled)}; the first in torch's priority order that supports the inputs runs)"


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


def to_stream_dtype(x: torch.Tensor) -> torch.Tensor:
    """Under autocast the residual stream runs in the autocast dtype (bf16), as the baseline's bf16
    model does; weights stay fp32 masters. Without this cast every elementwise op runs in fp32."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def float32_stream(x: torch.Tensor) -> torch.Tensor:
    """model.fp32_stream: the residual stream stays float32 under autocast (PR #29's fp32 model under
    torch.autocast): only the matmuls run in bf16, and every residual add is a float32 add."""
    return x.float()


def scaled_linear(lin: nn.Linear, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """lin(x) * scale (a per-output-channel scale; None = 1). model.fold_scales folds the scale into the
    weight, F.linear(x, diag(scale) W): the same function and the same gradients (dL/dW =
    diag(scale) dL/dW_eff in both), but the scale's gradient becomes a reduction over W's d x k
    entries instead of over the B*T x d output, and the output is not saved for it. A Linear with its
    own forward (model.fp8's Fp8Linear) or with hooks (GPTQ's Hessians, LoRA TTT) runs as itself."""
    if scale is None:
        return lin(x)
    if type(lin).forward is nn.Linear.forward and not (lin._forward_hooks or lin._forward_pre_hooks):
        return F.linear(x, lin.weight * scale[:, None])
    return lin(x) * scale.to(x.dtype)


class Rotary(nn.Module):
    """RoPE over the first `dims` dims of each head; the rest pass through unrotated.

    Full RoPE (dims = head dim) is the baseline; partial RoPE (model.rope_dims=16, records (a)/(c),
    PR #1204 lineage) rotates 16 dims so the others carry position-free content:
        rot(x)[:d/2] = x1 cos + x2 sin,  rot(x)[d/2:] = x2 cos - x1 sin  over the first `dims` dims."""

    def __init__(self, dims: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.dims = dims

    def forward(self, x: torch.Tensor, seq_dim: int = -2) -> torch.Tensor:
        """x: (..., T, D) with seq_dim=-2, or (B, T, H, D) with seq_dim=-3."""
        # cos/sin recomputed per call: a T x D/2 outer product is free next to attention, and
        # stateless code keeps torch.compile free of guards on a Python-side cache.
        T = x.size(seq_dim)
        freqs = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), self.inv_freq)
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)  # (T, dims/2)
        if seq_dim == -3:
            cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, dims/2): broadcast over the heads
        rot, rest = x[..., :self.dims], x[..., self.dims:]
        d = self.dims // 2
        x1, x2 = rot[..., :d], rot[..., d:]
        rot = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
        return torch.cat((rot, rest), dim=-1) if rest.size(-1) else rot


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-dim weight (PR #29 L75-83): x / sqrt(mean(x^2) + eps) in float32,
    back to x's dtype, times `weight` (init 1; PR #29's block init then redraws it, model.init_std)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype) * self.weight.to(x.dtype)


class WeightlessNorm(nn.Module):
    """The baseline's RMSNorm as a module (no parameters): rms_norm(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


class Attention(nn.Module):
    """Causal GQA attention with QK-norm, RoPE and a learned per-head q gain. The virtual layer's ops
    adjust q/k/v (LoRA), V (V-injection), pick the kernel ("attend": document-isolated or not), adjust
    the attention output (XSA, output gate) and the projection (LoRA)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._projections(cfg)
        self.q_gain = nn.Parameter(torch.full((cfg.n_heads,), cfg.qk_gain_init))

    def _projections(self, cfg: ModelConfig) -> None:
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        kv_dim = self.n_kv * self.head_dim
        self.c_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.c_k = nn.Linear(cfg.dim, kv_dim, bias=False)
        self.c_v = nn.Linear(cfg.dim, kv_dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.rotary = Rotary(cfg.rope_dims or self.head_dim, cfg.rope_base)
        self.qkv_sizes = (cfg.dim, kv_dim, kv_dim)
        self.fused_qkv = cfg.fused_qkv and not cfg.fp8  # model.fp8 converts c_q/c_k/c_v one by one
        self.heads = self.heads_bthd if cfg.attn_bthd else self.heads_bhtd

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x's q, k, v. With model.fused_qkv one product with the three weights stacked,
        x [W_q; W_k; W_v]^T, split into q, k, v: the same sums as three products, but x is read once
        forward and once for the weight gradient, and its gradient is one product with K = dim + 2 kv
        instead of three and two adds. The parameters stay three, so Muon, QAT,
        GPTQ and the artifact see c_q, c_k, c_v as before. A Linear with forward hooks (GPTQ's
        Hessians, LoRA TTT's adapters) makes the call run the three modules.
        Measured slower, hence off everywhere: `baseline` on one H200 (torch 2.11, micro-batch 512),
        243.74 ms/step fused against 237.07 (bench/results/2026-12-02c_baseline_speed_variants_h200)."""
        lins = (self.c_q, self.c_k, self.c_v)
        if self.fused_qkv and not any(m._forward_hooks or m._forward_pre_hooks for m in lins):
            w = torch.cat([m.weight for m in lins])
            return F.linear(x, w).split(self.qkv_sizes, dim=-1)
        return self.c_q(x), self.c_k(x), self.c_v(x)

    def position(self, q: torch.Tensor, k: torch.Tensor, seq_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm, RoPE, q gain on (B, H, T, D) q and (B, KV, T, D) k (seq_dim=-2), or on
        (B, T, H, D) and (B, T, KV, D) (seq_dim=-3)."""
        q, k = self.rotary(rms_norm(q), seq_dim), self.rotary(rms_norm(k), seq_dim)
        gain = self.q_gain.to(q.dtype)
        return q * (gain[:, None, None] if seq_dim == -2 else gain[:, None]), k

    def _split_heads(self, q, k, v, B: int, T: int):
        """(B, T, C) projections -> (B, T, H, D) q and (B, T, KV, D) k, v views."""
        return (q.view(B, T, self.n_heads, self.head_dim), k.view(B, T, self.n_kv, self.head_dim),
                v.view(B, T, self.n_kv, self.head_dim))

    def heads_bhtd(self, q, k, v, B: int, T: int):
        """(B, T, C) projections -> attention's (B, H, T, D) q/k/v, QK-norm, RoPE and gain applied there."""
        q, k, v = (t.transpose(1, 2) for t in self._split_heads(q, k, v, B, T))
        q, k = self.position(q, k)
        return q, k, v

    def heads_bthd(self, q, k, v, B: int, T: int):
        """model.attn_bthd: the same values, but QK-norm, RoPE and gain run on (B, T, H, D) and
        attention gets transposed views of that memory. cuDNN attention allocates its output in
        q's memory layout, so the output comes back as (B, T, H, D) memory and the output
        projection reads it with no copy; the gradient reaching attention then has the layout
        of its output, also with no copy. The arithmetic is the same op for op
        (tests/model/test_blocks.py); only the memory layout differs."""
        q, k, v = self._split_heads(q, k, v, B, T)
        q, k = self.position(q, k, seq_dim=-3)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx, layer, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """out_scale: Block's attn_scale folded into the output projection (model.fold_scales; only
        where the layer has no "out" op, whose adapters add after the projection)."""
        B, T, C = x.shape
        q, k, v = self.project_qkv(x)
        for op in layer.qkv:
            q, k, v = op(x, q, k, v)
        for op in layer.v:
            v = op(v, ctx)
        q, k, v = self.heads(q, k, v, B, T)
        y = layer.attend(q, k, v, ctx)
        for op in layer.attn_y:
            y = op(y, v, x)
        y = y.transpose(1, 2).reshape(B, T, C)
        out = scaled_linear(self.proj, y, out_scale)
        for op in layer.out:
            out = op(y, out)
        return out


class PlainAttention(Attention):
    """PR #29's attention (L116-167): RoPE on q and k, no QK-norm, no q gain; scale 1/sqrt(head dim).
    Its RoPE turns the other way (x1 cos + x2 sin): the same model up to negating half of the c_q
    and c_k rows, which its symmetric init and AdamW's elementwise update cannot tell apart."""

    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)
        self._projections(cfg)

    def position(self, q: torch.Tensor, k: torch.Tensor, seq_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary(q, seq_dim), self.rotary(k, seq_dim)


class ReluSquaredMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, negative_slope: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, self.negative_slope) if self.negative_slope else F.relu(h)
        return scaled_linear(self.proj, h.square(), out_scale)


class SwiGLUMLP(nn.Module):
    """proj(silu(gate x) * up x) (PR #21 L623-635, PR #29): gate and up are one fused Linear, one
    matmul; Muon still orthogonalizes them as the two matrices the published code has
    (`muon_row_blocks`, train/optim.py), not as one (2 hidden, dim) matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, 2 * cfg.mlp_hidden, bias=False)  # gate and up, fused
        self.fc.weight.muon_row_blocks = 2
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return scaled_linear(self.proj, F.silu(gate) * up, out_scale)


MLPS = {
    "relu2": lambda cfg: ReluSquaredMLP(cfg),
    "leaky_relu2": lambda cfg: ReluSquaredMLP(cfg, negative_slope=0.5),  # record (c) L429
    "swiglu": SwiGLUMLP,
}


def plain_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx) -> torch.Tensor:
    """The default "attend" hook: causal attention over the whole row (documents may see each other)."""
    return causal_attention(q, k, v)


def expand_kv_heads(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, KV, T, D) -> (B, KV * groups, T, D), query head h reading kv head h // groups (SDPA's
    enable_gqa order), in (B, T, H, D) memory like model.attn_bthd's q."""
    B, KV, T, D = t.shape
    return t.transpose(1, 2).unsqueeze(3).expand(B, T, KV, groups, D).reshape(B, T, KV * groups, D).transpose(1, 2)


def expanded_kv_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx) -> torch.Tensor:
    """model.attn_expand_kv: plain_attend with k and v copied out to all query heads first, so the
    kernel runs as multi-head attention. The same values (tests/model/test_blocks.py). Why it may pay:
    with GQA, cuDNN's backward writes dK/dV per query head and sums each group in a separate
    `fmha_reduce_head` kernel (3.6 ms of a 222 ms `baseline` step on one H200,
    bench/results/2026-12-04_baseline_attn_bthd_h200); expanded, the sum is the expand's backward,
    which inductor can fuse into the k/v producers' backward. Costs two (B, T, H, D) copies forward.
    Measured slower, hence off everywhere: `baseline` on one H200 223.78 against 221.13 ms/step
    (attention -4.5 ms, the copies +5.1 ms; bench/results/2026-12-04b_baseline_expand_kv_h200)."""
    groups = q.size(1) // k.size(1)
    if groups > 1:
        k, v = expand_kv_heads(k, groups), expand_kv_heads(v, groups)
    return causal_attention(q, k, v)


def mix_x0(x: torch.Tensor, mix: torch.Tensor, ctx) -> torch.Tensor:
    """The baseline's resid_mix: mix[0] x + mix[1] x0 (x0 = the normalized embedding)."""
    return mix[0] * x + mix[1] * ctx.x0


def sequential_residual(x: torch.Tensor, mix: torch.Tensor, ctx, attn, mlp, norm) -> torch.Tensor:
    """The baseline's pre-norm residual: x = mix_x0(x); x += attn(norm(x)); x += mlp(norm(x))."""
    x = mix_x0(x, mix, ctx)
    x = x + attn(norm(x))
    return x + mlp(norm(x))


class Block(nn.Module):
    """One physical block. Its residual controls (attn_scale, mlp_scale, resid_mix) live here unless
    model.per_layer_scales moves them to one set per virtual layer (PR #927, model/layer_tricks.py).
    model.fold_scales multiplies attn_scale and mlp_scale into the output projections' weights
    (scaled_linear) instead of into their B x T x d outputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._branches = self._folded_branches if cfg.fold_scales else self._scaled_branches
        self._attend = expanded_kv_attend if cfg.attn_expand_kv else plain_attend
        self.attn = Attention(cfg)
        self.mlp = MLPS[cfg.mlp](cfg)
        if not cfg.per_layer_scales:
            self.attn_scale = nn.Parameter(torch.ones(cfg.dim))
            self.mlp_scale = nn.Parameter(torch.ones(cfg.dim))
            self.resid_mix = nn.Parameter(torch.stack([torch.ones(cfg.dim), torch.zeros(cfg.dim)]))

    def default_ops(self) -> dict:
        """The single-valued hooks of a virtual layer running this block, before any trick."""
        return {"controls": self.controls, "norm": rms_norm, "residual": sequential_residual, "mlp": self.mlp,
                "attend": self._attend}

    def controls(self, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.attn_scale, self.mlp_scale, self.resid_mix

    def forward(self, x: torch.Tensor, ctx, layer) -> torch.Tensor:
        attn, mlp, mix = self._branches(x, ctx, layer)
        return layer.residual(x, mix, ctx, attn, mlp, layer.norm)

    def _scaled_branches(self, x: torch.Tensor, ctx, layer):
        attn_scale, mlp_scale, mix = (c.to(x.dtype) for c in layer.controls(ctx))

        def attn(h):
            return attn_scale * self.attn(h, ctx, layer)

        def mlp(h):
            return mlp_scale * layer.mlp(h)

        return attn, mlp, mix

    def _folded_branches(self, x: torch.Tensor, ctx, layer):
        attn_scale, mlp_scale, mix = layer.controls(ctx)

        def attn(h):
            return self.attn(h, ctx, layer, out_scale=attn_scale)

        def attn_with_adapters(h):  # "out" adapters add after the projection: scale their sum
            return attn_scale.to(h.dtype) * self.attn(h, ctx, layer)

        def mlp(h):
            return layer.mlp(h, out_scale=mlp_scale)

        return (attn_with_adapters if layer.out else attn), mlp, mix.to(x.dtype)


class PlainBlock(nn.Module):
    """PR #29's block (L189-201; model.block=plain_prenorm): a plain pre-norm residual with learned
    RMSNorm weights, no resid_mix, no attn/mlp scales, no QK-norm or q gain:

        x = x + attn(attn_norm(x));   x = x + mlp(mlp_norm(x))

    Parameters blocks.{i}.attn_norm.weight, blocks.{i}.mlp_norm.weight (PARAM_KINDS "norm"). The
    layer's list hooks (LoRA, XSA, V-injection, U-Net skips around the block) and its "mlp" and
    "attend" still apply; "controls", "norm" and "residual" do not exist here (config.py refuses
    the tricks that replace them)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim)
        self.attn = PlainAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim)
        self.mlp = MLPS[cfg.mlp](cfg)
        self._attend = expanded_kv_attend if cfg.attn_expand_kv else plain_attend

    def default_ops(self) -> dict:
        return {"controls": None, "norm": None, "residual": None, "mlp": self.mlp, "attend": self._attend}

    def forward(self, x: torch.Tensor, ctx, layer) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx, layer)
        return x + layer.mlp(self.mlp_norm(x))


BLOCKS = {"baseline": Block, "plain_prenorm": PlainBlock}
