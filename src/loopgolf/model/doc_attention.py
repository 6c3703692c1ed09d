"""Document-isolated causal attention: a token attends only to earlier tokens of its own document.

Shards pack documents end to end, each starting with BOS (data/tokenizer.BOS_ID), and training rows
are cut from that stream, so plain causal attention lets a document read the end of the one before
it. PR #1530 (varlen FlashAttention-3) and every record since, #1855 included (train_gpt.py L592-614
`_build_cu_seqlens`, L1026-1036 `flash_attn_varlen_func(..., causal=True)`), split each batch into
documents and attend within each. With segment id d(t) = number of BOS tokens at positions <= t of
the row (a row's first tokens before any BOS form their own segment), position t attends to s iff

    s <= t  and  d(s) = d(t)

which equals running causal attention on every document separately: RoPE depends on q/k position
differences only, so the absolute positions inside the row change nothing (#1855 also rotates with
row positions). Kernels, chosen per call by device:
  - CUDA with `flash_attn_interface` importable: FlashAttention-3 varlen over the flattened batch,
    cu_seqlens = segment starts (every row start and every BOS) + B*T, max_seqlen = T (an upper
    bound). The starts come from torch.nonzero, a data-dependent shape: under torch.compile this
    is a graph break (#1855 builds cu_seqlens in its loader instead);
  - CUDA under torch.compile otherwise: FlexAttention with a block mask of the rule above (blocks
    of whole other documents are skipped, not computed);
  - otherwise (CPU, or eager CUDA): SDPA with the (B, 1, T, T) boolean mask of the rule.
Deviation from #1855: its loader also cuts documents longer than train_seq_len into train_seq_len
pieces and packs one row of B*T tokens; here rows are the loader's (B, T) rows, so a document that
crosses a row boundary is cut there. No parameters (model.doc_isolated_attn).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from loopgolf.config import ModelConfig
from loopgolf.data.tokenizer import BOS_ID
from loopgolf.model.recurrence import LayerSpec
from loopgolf.model.wiring import Context, Feature, ModelShape


def segment_ids(idx: torch.Tensor) -> torch.Tensor:
    """(B, T) int32: the document segment of each position, d(t) = #BOS at positions <= t."""
    return torch.cumsum((idx == BOS_ID).to(torch.int32), dim=1, dtype=torch.int32)


def doc_mask(seg: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: query t may read key s (s <= t, same segment)."""
    T = seg.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    return (seg[:, :, None] == seg[:, None, :]).logical_and(causal)[:, None]


def cu_seqlens(idx: torch.Tensor) -> torch.Tensor:
    """int32 boundaries of the segments of the flattened (B*T) batch: every row start and every BOS,
    then B*T (FlashAttention's varlen layout)."""
    B, T = idx.shape
    start = idx == BOS_ID
    start[:, 0] = True
    flat = torch.nonzero(start.reshape(-1)).reshape(-1).to(torch.int32)
    return torch.cat([flat, torch.tensor([B * T], dtype=torch.int32, device=idx.device)])


def sdpa_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDPA over (B, H, T, D) q and (B, KV, T, D) k, v with a (B, 1, T, T) boolean mask (doc_mask)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.size(-1) ** -0.5,
                                          enable_gqa=k.size(1) != q.size(1))


def flex_block_mask(seg: torch.Tensor):
    """FlexAttention BlockMask of the document rule for (B, T) segment ids."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_doc_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (seg[b, q_idx] == seg[b, kv_idx])

    B, T = seg.shape
    return create_block_mask(same_doc_causal, B, None, T, T, device=seg.device)


def flex_doc_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, scale=q.size(-1) ** -0.5,
                          enable_gqa=k.size(1) != q.size(1))


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                     varlen_fn: Callable) -> torch.Tensor:
    """(B, H, T, D) through a FlashAttention-style varlen kernel on the flattened batch:
    varlen_fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=,
    causal=) over (B*T, heads, D) tensors."""
    B, H, T, D = q.shape

    def flat(t):
        return t.transpose(1, 2).reshape(B * T, t.size(1), D)

    out = varlen_fn(flat(q), flat(k), flat(v), cu, cu, T, T, softmax_scale=D ** -0.5, causal=True)
    out = out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the LSE
    return out.reshape(B, T, H, D).transpose(1, 2)


def _fa3_varlen() -> Callable | None:
    if importlib.util.find_spec("flash_attn_interface") is None:
        return None
    return getattr(importlib.import_module("flash_attn_interface"), "flash_attn_varlen_func", None)


class DocIsolatedAttention(Feature):
    """Attention never crosses a document boundary (model.doc_isolated_attn; PR #1530 -> #1855; the
    rule and the kernels are in the module docstring). Replaces every layer's "attend" hook; the
    mask (or cu_seqlens) is built once per forward from the tokens. No parameters."""

    field = "doc_isolated_attn"

    def __init__(self, cfg: ModelConfig, shape: ModelShape, varlen_fn: Callable | None = None):
        self.varlen_fn = varlen_fn if varlen_fn is not None else _fa3_varlen()

    def at(self, spec: LayerSpec):
        return {"attend": self.attend}

    def kernel(self, device: torch.device) -> str:
        """"varlen", "flex" or "sdpa_mask": what `attend` runs for a tensor on `device` now."""
        if device.type == "cuda" and self.varlen_fn is not None:
            return "varlen"
        if device.type == "cuda" and torch.compiler.is_compiling():
            return "flex"
        return "sdpa_mask"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: Context) -> torch.Tensor:
        return getattr(self, "_" + self.kernel(q.device))(q, k, v, ctx)

    def _varlen(self, q, k, v, ctx):
        return varlen_attention(q, k, v, ctx.once("doc_cu_seqlens", lambda: cu_seqlens(ctx.idx)),
                                self.varlen_fn)

    def _flex(self, q, k, v, ctx):
        seg = ctx.once("doc_segments", lambda: segment_ids(ctx.idx))
        return flex_doc_attention(q, k, v, ctx.once("doc_block_mask", lambda: flex_block_mask(seg)))

    def _sdpa_mask(self, q, k, v, ctx):
        return sdpa_masked(q, k, v, ctx.once("doc_mask", lambda: doc_mask(segment_ids(ctx.idx))))


TRICKS = (DocIsolatedAttention,)
