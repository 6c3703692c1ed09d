"""The logit head: how final hidden states become logits and per-token nll, picked at construction.

Two choices, each made once in GPT.__init__ (`build`), so GPT.forward has no branch:
  - the cap (`cap_of`): SoftCap (c tanh(z/c), model.logit_softcap = c; 0 = none, as the baseline's
    L717-724) or AsymLogit (model.asym_logit: separate learned caps for positive and negative logits);
  - the loss path: PlainHead (the logits, then F.cross_entropy: every N x V tensor in memory) or
    FusedHead (model.fused_ce: model/fused_ce.py, chunked rows, no N x V tensor).
Both heads take h (..., d) after the final RMSNorm and the head weight W (V, d) (tied: tok_emb), and
run the matmul in h's dtype (bf16 under autocast), the cap and the softmax in fp32. FusedHead's
`logits` runs the same row chunks as its `nll`, so scored nats equal -log softmax(logits)[target]
to float32 rounding on any device (the legality check compares the two).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import to_stream_dtype
from loopgolf.model.fused_ce import chunk_rows, fused_softcapped_nll


class SoftCap(nn.Module):
    """Symmetric logit softcap l = c tanh(z / c) (baseline L717-724); c = 0: l = z. No parameters."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = float(cap)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.cap
        return c * torch.tanh(z / c) if c > 0 else z

    def fused_caps(self) -> tuple:
        return self.cap, None


class AsymLogit(nn.Module):
    """Asymmetric logit rescale (PR #1923 "Asymmetric Logit Rescale", used by #1945 and #2135;
    model.asym_logit): two learned caps, one per sign of the raw logit z,

        l = c+ tanh(z / c+)  where z > 0,     l = c- tanh(z / c-)  elsewhere,

    both initialized to model.logit_softcap, so the head starts exactly as the symmetric softcap.
    Parameters logit_cap.softcap_pos and logit_cap.softcap_neg (fp32 scalars, PARAM_KINDS row
    "logit_cap"). In #1923 the training loss keeps the symmetric cap (its fused CE kernel has one
    softcap), so the caps stay at their init through training and only TTT's global SGD moves them.
    Here the caps are in the training loss too, trained by Adam at optim.asym_logit_lr, whose
    default 0 reproduces #1923 (they still get gradients, which enter optim.grad_clip's norm; and
    the ttt_sgd / ttt_lora phases adapt them, as every base weight)."""

    def __init__(self, cap: float):
        super().__init__()
        self.softcap_pos = nn.Parameter(torch.tensor(float(cap)))
        self.softcap_neg = nn.Parameter(torch.tensor(float(cap)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = torch.where(z > 0, self.softcap_pos.to(z.dtype), self.softcap_neg.to(z.dtype))
        return c * torch.tanh(z / c)

    def fused_caps(self) -> tuple:
        return self.softcap_pos, self.softcap_neg


def cap_of(cfg: ModelConfig) -> nn.Module:
    return AsymLogit(cfg.logit_softcap) if cfg.asym_logit else SoftCap(cfg.logit_softcap)


class PlainHead:
    """logits = cap((h Wᵀ).float()); nll = F.cross_entropy(logits), every N x V tensor in memory."""

    def __init__(self, cap: nn.Module):
        self.cap = cap

    def logits(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.cap(F.linear(h, w.to(h.dtype)).float())

    def nll(self, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(h, w)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return nll.view(targets.shape)


class FusedHead:
    """model.fused_ce: nll by fused_ce.fused_softcapped_nll, logits by the same row chunks."""

    def __init__(self, cap: nn.Module, vocab: int, rows: int = 0):
        self.cap, self.rows = cap, rows or chunk_rows(vocab)

    def logits(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = to_stream_dtype(h)
        flat, wc = h.reshape(-1, h.size(-1)), w.to(h.dtype)
        with torch.autocast(h.device.type, enabled=False):
            parts = [self.cap(F.linear(flat[s:s + self.rows], wc).float())
                     for s in range(0, flat.size(0), self.rows)]
        return torch.cat(parts).view(*h.shape[:-1], w.size(0))

    def nll(self, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cap_pos, cap_neg = self.cap.fused_caps()
        return fused_softcapped_nll(to_stream_dtype(h), w, targets, cap_pos, cap_neg, self.rows)


def build(cfg: ModelConfig) -> tuple[nn.Module, PlainHead | FusedHead]:
    """(cap module, head) for `cfg`: the cap is registered on the GPT as `logit_cap`."""
    cap = cap_of(cfg)
    return cap, FusedHead(cap, cfg.vocab_size) if cfg.fused_ce else PlainHead(cap)
