"""Tricks inside attention at chosen virtual layers: V-injection (VE128), per-loop LoRA, XSA,
the sparse attention output gate, and document-isolated attention (model/doc_attention.py).

They plug into Attention.forward through the layer's "qkv", "v", "attend", "attn_y" and "out" hooks
(model/wiring.py); a layer without them runs plain attention.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.doc_attention import DocIsolatedAttention
from loopgolf.model.recurrence import LayerSpec
from loopgolf.model.wiring import Context, Feature, ModelShape


class ValueInjection(Feature, nn.Module):
    """VE128 (record (a) L318-326; model.ve_dim, model.ve_layers): a vocab x ve_dim token table,
    projected to the KV width and added to the attention values of the chosen virtual layers:

        v += scales[j] * g * proj(table[idx])   at the j-th layer of ve_layers (negative = from the end)

    Inits (model.*): table ~ N(0, ve_table_std), scales = ve_scale_init (one per injected layer;
    default 0: transparent), proj nn.Linear's default or orthogonal with gain ve_proj_gain > 0, and
    g = 1, or with ve_global_scale > 0 a learned scalar starting there (PR #1290's 0.1, L737-740;
    PR #927: std 0.01, scales 1, orthogonal proj x 1/sqrt(2 x 7), L640-641 and L775-786).
    Parameters: ve_inject.table.weight, ve_inject.proj.weight, ve_inject.scales (and ve_inject.scale)."""

    field = "ve_dim"

    def __init__(self, vocab: int, ve_dim: int, kv_dim: int, layers: tuple[int, ...], table_std: float = 0.02,
                 scale_init: float = 0.0, global_scale: float = 0.0, proj_gain: float = 0.0):
        super().__init__()
        self.layers = layers
        self.table = nn.Embedding(vocab, ve_dim)
        self.proj = nn.Linear(ve_dim, kv_dim, bias=False)
        self.scales = nn.Parameter(torch.full((len(layers),), float(scale_init)))
        if global_scale:
            self.scale = nn.Parameter(torch.tensor(float(global_scale)))
        self._out = self._scaled if global_scale else self._plain  # a bound method: no module alias
        nn.init.normal_(self.table.weight, std=table_std)
        if proj_gain:
            nn.init.orthogonal_(self.proj.weight, gain=proj_gain)

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        if not cfg.ve_dim:
            return None
        return cls(cfg.vocab_size, cfg.ve_dim, shape.kv_dim, shape.ve_layers, cfg.ve_table_std,
                   cfg.ve_scale_init, cfg.ve_global_scale, cfg.ve_proj_gain)

    def create(self):
        return {"ve_inject": self}

    def _plain(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def _scaled(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.proj(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._out(self.table(idx))

    def at(self, spec: LayerSpec):
        chosen = [v % spec.n_virtual for v in self.layers]
        if spec.v not in chosen:
            return {}
        j = chosen.index(spec.v)
        return {"v": partial(self.inject, j=j)}

    def inject(self, v: torch.Tensor, ctx: Context, j: int) -> torch.Tensor:
        table = ctx.once("ve_inject", lambda: self(ctx.idx))
        return v + self.scales[j].to(v.dtype) * table.to(v.dtype)


class LoopLoRA(Feature, nn.Module):
    """LoRA on attention q/k/v/o, one adapter set per extra loop (seed PR #21 L716-724, L761;
    model.lora_rank = r): the k-th repeat of a block (visit k >= 1; in a "4x3" plan, loop k) adds

        q += B_q[k-1] (A_q[k-1] x)   (likewise k, v),   out += B_o[k-1] (A_o[k-1] y)

    and every block repeated for the k-th time shares set k-1; first visits (loop 0) run the base
    weights only. x is the attention's normalized input, y its output before the projection.
    A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (nn.Linear's default, as the PR's LoRAAdapter.down),
    B = 0 (a no-op at initialization). Parameters lora.{q,k,v,o}_{a,b}: a (n_sets, r, d_in),
    b (n_sets, d_out, r), n_sets = the most visits of a block - 1; trained by Muon matrix by matrix
    (PR L951). A deeper eval-time plan reuses the block's deepest trained visit (plan.with_loops)."""

    field = "lora_rank"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        super().__init__()
        r, d, kv, n = cfg.lora_rank, cfg.dim, shape.kv_dim, shape.max_visits - 1
        if n < 1:
            raise ValueError(f"model.lora_rank={r}: plan {cfg.plan!r} runs no block twice, and LoRA sets "
                             "exist only for extra loops (PR #21); loop a block (e.g. model.plan=4x3) or set "
                             "model.lora_rank=0")
        self.q_a, self.q_b = self._pair(n, r, d, d)
        self.k_a, self.k_b = self._pair(n, r, d, kv)
        self.v_a, self.v_b = self._pair(n, r, d, kv)
        self.o_a, self.o_b = self._pair(n, r, d, d)

    @staticmethod
    def _pair(n: int, r: int, d_in: int, d_out: int) -> tuple[nn.Parameter, nn.Parameter]:
        a = (torch.rand(n, r, d_in) * 2 - 1) / d_in ** 0.5
        return nn.Parameter(a), nn.Parameter(torch.zeros(n, d_out, r))

    def create(self):
        return {"lora": self}

    def at(self, spec: LayerSpec):
        if spec.visit_slot == 0:
            return {}
        i = spec.visit_slot - 1
        return {"qkv": partial(self.qkv, i=i), "out": partial(self.out, i=i)}

    @staticmethod
    def _delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (x @ a.to(x.dtype).mT) @ b.to(x.dtype).mT

    def qkv(self, x, q, k, v, i: int):
        return (q + self._delta(x, self.q_a[i], self.q_b[i]), k + self._delta(x, self.k_a[i], self.k_b[i]),
                v + self._delta(x, self.v_a[i], self.v_b[i]))

    def out(self, y, out, i: int):
        return out + self._delta(y, self.o_a[i], self.o_b[i])


class XSA(Feature):
    """Exclusive self-attention on the last n virtual layers of the running plan (record (c)
    L393-400; model.xsa_last = n, -1 = all): the attention output loses its component along the
    token's own normalized value,  y -= (y . v_hat) v_hat,  v_hat = v / |v| (per head, GQA-expanded).
    Decided per VIRTUAL layer, so a shared block runs it only on its late visits. No parameters.

    A head dim that is not a multiple of 8 is zero-padded to one around the projection (exact: zeros
    change neither |v| nor y . v_hat). Without it torch.compile (torch 2.11, H200) computes wrong
    gradients at head dim 110 (seed-shared-3x4, d=880): relative error ~1e3 on every attention
    weight against eager, and a run that diverges; padded, the errors are bf16 noise and 12 steps
    match eager (bench/results/2026-12-02_seed-shared-3x4_compile_xsa_h200)."""

    field = "xsa_last"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        self.last, self.group = cfg.xsa_last, cfg.n_heads // cfg.n_kv_heads
        self.pad = (-(cfg.dim // cfg.n_heads)) % 8

    def at(self, spec: LayerSpec):
        first = 0 if self.last < 0 else spec.n_virtual - self.last
        return {"attn_y": self} if spec.v >= first else {}

    def __call__(self, y: torch.Tensor, v: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        d = y.size(-1)
        if self.pad:
            y, v = F.pad(y, (0, self.pad)), F.pad(v, (0, self.pad))
        vh = F.normalize(v, dim=-1).repeat_interleave(self.group, dim=1)  # (B,H,T,D)
        out = y - (y * vh).sum(-1, keepdim=True) * vh
        return out[..., :d] if self.pad else out


class SparseAttnGate(Feature, nn.Module):
    """Sparse attention output gate (PR #1787; #1855 train_gpt.py L988-1001 and L1059-1066;
    model.attn_gate_window = w, model.attn_gate_scale = c): each head's attention output is scaled by
    a sigmoid of the first w dims of the attention's normalized input x,

        y[t, h] <- sigmoid(c * W[block, h] . x_t[:w]) * y[t, h]

    after XSA and before the output projection (the order of #1855). W (n_blocks, n_heads, w) is one
    (n_heads, w) matrix per physical block, shared by the block's loop visits, init 0 (#1855's
    SPARSE_ATTN_GATE_INIT_STD=0): every head starts at sigmoid(0) = 1/2, so unlike most tricks the
    gate is not transparent at initialization. Parameter attn_gate.weight (trained by Adam at the
    scalar LR, as #1855's CONTROL_TENSOR_NAME_PATTERNS does; stored fp32 here, int8 per row there)."""

    field = "attn_gate_window"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        super().__init__()
        self.window, self.scale = cfg.attn_gate_window, cfg.attn_gate_scale
        self.weight = nn.Parameter(torch.zeros(shape.n_blocks, cfg.n_heads, cfg.attn_gate_window))

    def create(self):
        return {"attn_gate": self}

    def at(self, spec: LayerSpec):
        return {"attn_y": partial(self.gate, block=spec.block)}

    def gate(self, y: torch.Tensor, v: torch.Tensor, x: torch.Tensor, block: int) -> torch.Tensor:
        logit = F.linear(x[..., :self.window], self.weight[block].to(x.dtype))  # (B, T, H)
        return y * torch.sigmoid(self.scale * logit).transpose(1, 2).unsqueeze(-1)  # y: (B, H, T, D)


TRICKS = (ValueInjection, LoopLoRA, XSA, SparseAttnGate, DocIsolatedAttention)
