"""Fused softcapped cross-entropy: per-token NLL of the logit head without its (N, V) logits (issue 15).

The plain head (model/logit_head.PlainHead) holds several N x V tensors at once: the matmul's logits,
their fp32 copy, tanh's output and the log-softmax that F.cross_entropy keeps for backward. Here the
N = B*T rows run in chunks of `rows` (chunk_rows(V): about 2**23 logits, 1024..32768 rows), so only
one chunk's logits exist at a time. Forward keeps the per-row logsumexp; backward recomputes each
chunk's logits (one extra head matmul, a third of the head's training FLOPs) and accumulates the
gradients of the hidden states, of the head weight (in fp32) and of the caps. With z = h Wᵀ in fp32
(the matmul in h's dtype, bf16 under autocast, as the plain head does) and c the softcap, or
c+ / c- by the sign of z (AsymLogit, model/logit_head.py):

    l = c tanh(z / c),   nll = logsumexp(l) - l[t]
    dnll/dl = softmax(l) - onehot(t),  dl/dz = 1 - tanh²(z/c),  dl/dc = tanh(z/c) - (z/c)(1 - tanh²(z/c))

A target equal to IGNORE_INDEX (-100, F.cross_entropy's default) gets nll 0 and no gradient.
softcap 0 means no cap (l = z). Lineage: the records' fused CE (PR #1787/#1855, techniques.md) fuses
softcap + CE in a Triton kernel over the bf16 logits they still hold; this never holds them.

Pure torch, so dynamo traces it under torch.compile and inductor fuses each chunk's pointwise and
reduction work into its own kernels (no hand-written Triton kernel is needed on that path). One
trap: AOTAutograd CSEs the joint graph, and a backward matmul written exactly as the forward's
(F.linear(h_chunk, W)) merges with it; the partitioner never recomputes a matmul, so it then saves
every chunk's logits for backward, the whole N x V again (measured: torch 2.13, CPU inductor).
Backward therefore multiplies by a contiguous copy of Wᵀ, a different graph node;
tests/model/test_fused_ce.py checks under torch.compile that no saved tensor has V columns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 32 MiB of fp32
IGNORE_INDEX = -100


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for a vocabulary of `vocab`: about CHUNK_ELEMENTS logits, 1024..32768 rows."""
    return max(1024, min(32768, CHUNK_ELEMENTS // vocab))


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The softmax dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cap_(z: torch.Tensor, cap_pos, cap_neg) -> torch.Tensor:
    """cap(z), in place on a chunk of fresh fp32 logits z."""
    if cap_neg is not None:
        c = torch.where(z > 0, cap_pos, cap_neg)
        return z.div_(c).tanh_().mul_(c)
    if cap_pos:
        return z.div_(cap_pos).tanh_().mul_(cap_pos)
    return z


def _dlogits(z: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, t: torch.Tensor, cap_pos, cap_neg
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(g * dnll/dz, g * dnll/d(c+, c-) or None) of one chunk from its fresh fp32 logits z
    (overwritten), row logsumexps lse, upstream gradients g (rows, 1) and targets t (rows, 1).
    In place where it can: two chunk-sized buffers live (four with AsymLogit)."""
    pos = None
    if cap_neg is not None:
        pos = z > 0
        c = torch.where(pos, cap_pos, cap_neg)
        u = z.div_(c)
        th = torch.tanh(u)
        dl = th * c
        del c
    elif cap_pos:
        th = z.div_(cap_pos).tanh_()
        dl = th * cap_pos
    else:
        th, dl = None, z
    dl = dl.sub_(lse[:, None]).exp_().mul_(g).scatter_add_(1, t, -g)  # (softmax - onehot) g
    if th is None:
        return dl, None
    if pos is None:
        return dl.mul_(th.mul_(th).neg_().add_(1)), None
    sech2 = th.mul(th).neg_().add_(1)
    dc = u.mul_(sech2).neg_().add_(th).mul_(dl)  # (tanh(u) - u sech²(u)) dl, u = z/c
    total = dc.sum()
    on_pos = dc.mul_(pos).sum()
    return dl.mul_(sech2), torch.stack([on_pos, total - on_pos])


class FusedSoftcappedNLL(torch.autograd.Function):
    """apply(h (N, d), w (V, d), targets (N,), cap_pos, cap_neg, rows) -> nll (N,) fp32.

    cap_pos: a float (the symmetric softcap; 0 = none) with cap_neg None, or two 0-d fp32 tensors
    (AsymLogit's caps, which get gradients). The matmuls run in h's dtype with autocast off: the
    caller passes h already in the compute dtype (logit_head.FusedHead does)."""

    @staticmethod
    def forward(ctx, h, w, targets, cap_pos, cap_neg, rows):
        acc = _acc(h.dtype)
        with torch.autocast(h.device.type, enabled=False):
            wc = w.to(h.dtype)
            nll, lse = [], []
            for s in range(0, h.size(0), rows):
                l = _cap_(F.linear(h[s:s + rows], wc).to(acc), cap_pos, cap_neg)
                m = torch.logsumexp(l, dim=-1)
                t = targets[s:s + rows]
                lt = l.gather(1, t.clamp_min(0)[:, None]).squeeze(1)
                nll.append(torch.where(t != IGNORE_INDEX, m - lt, 0.0))
                lse.append(m)
        asym = cap_neg is not None
        ctx.rows, ctx.asym, ctx.cap = rows, asym, None if asym else cap_pos
        ctx.save_for_backward(h, w, targets, torch.cat(lse), *((cap_pos, cap_neg) if asym else ()))
        return torch.cat(nll)

    @staticmethod
    def backward(ctx, grad):
        h, w, targets, lse, *caps = ctx.saved_tensors
        cap_pos, cap_neg = caps if ctx.asym else (ctx.cap, None)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, acc = ctx.rows, _acc(h.dtype)
        with torch.autocast(h.device.type, enabled=False):
            wc = w.to(h.dtype)
            wt = wc.t().contiguous()  # not F.linear(hc, wc): see the module docstring
            g = torch.where(targets != IGNORE_INDEX, grad.to(acc), 0.0)
            grad_h = h.new_empty(h.shape) if want_h else None
            dw = torch.zeros(w.shape, dtype=acc, device=w.device)
            dcap = torch.zeros(2, dtype=acc, device=h.device)
            for s in range(0, h.size(0), rows):
                hc, tc = h[s:s + rows], targets[s:s + rows, None].clamp_min(0)
                dz, dc = _dlogits((hc @ wt).to(acc), lse[s:s + rows], g[s:s + rows, None], tc,
                                  cap_pos, cap_neg)
                if dc is not None:
                    dcap = dcap + dc
                dz = dz.to(h.dtype)
                if want_h:
                    grad_h[s:s + rows] = dz @ wc
                if want_w:
                    dw.add_((dz.t() @ hc).to(acc))
        grad_w = dw.to(w.dtype) if want_w else None
        grad_pos, grad_neg = (dcap[0].to(cap_pos.dtype), dcap[1].to(cap_neg.dtype)) if ctx.asym else (None, None)
        return grad_h, grad_w, None, grad_pos, grad_neg, None


def fused_softcapped_nll(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, cap_pos=0.0,
                         cap_neg: torch.Tensor | None = None, rows: int = 0) -> torch.Tensor:
    """Per-token nll (fp32, shape of `targets`) of logits cap(h Wᵀ); h (..., d) in the compute
    dtype, targets (...) integer; rows 0 = chunk_rows(V). See the module docstring."""
    n = targets.numel()
    nll = FusedSoftcappedNLL.apply(h.reshape(n, h.size(-1)), w, targets.reshape(n), cap_pos, cap_neg,
                                   rows or chunk_rows(w.size(0)))
    return nll.view(targets.shape)
