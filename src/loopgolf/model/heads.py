"""Training-only auxiliary heads: multi-token prediction (MTP). They never ship in an artifact."""
from __future__ import annotations

import torch
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import rms_norm
from loopgolf.model.wiring import Feature, ModelShape


class MTPHead(nn.Module):
    """One head: a projection whose normalized output goes through the model's unembedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)


class MTPHeads(Feature, nn.ModuleList):
    """Multi-token prediction (seed PR #21; model.mtp_heads = n, model.mtp_weight = w): head k
    (1..n) predicts the token at t+1+k from the final hidden state h_t,

        loss_t = nll_t + w / n * sum_k T / (T - k) * CE(unembed(rms_norm(proj_k h_t)), token_{t+1+k})

    over rows of T tokens (positions without such a target add nothing; each CE is the model's own
    head, `model.nll`: its cap, and model.fused_ce's chunked path). The factor T / (T - k) makes the
    mean over all positions equal PR #21's loss + w * mean_k(mean CE of head k over its T - k
    positions) (L1107-1119): head = linear map, weightless RMSNorm, the tied softcapped head (L776-795).
    Only in training mode; in eval mode the loss is the plain next-token nll. proj_k is nn.Linear's
    default init (the PR's CastedLinear). Parameters mtp_heads.{k}.proj.weight are training-only:
    GPT.shipped_state drops them (the PR keeps its heads outside the counted model)."""

    field = "mtp_heads"
    training_only = True

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        super().__init__(MTPHead(cfg.dim) for _ in range(cfg.mtp_heads))
        self.aux_weight = cfg.mtp_weight

    def create(self):
        return {"mtp_heads": self}

    def model_hooks(self):
        return {"loss": self.add_loss}

    def add_loss(self, nll: torch.Tensor, h: torch.Tensor, targets: torch.Tensor, model) -> torch.Tensor:
        if not self.training:
            return nll
        aux = torch.zeros_like(nll)
        T = nll.size(1)
        for k, head in enumerate(self, start=1):  # targets[:, t+k] is the token at t+1+k
            aux[:, :-k] += model.nll(rms_norm(head.proj(h[:, :-k])), targets[:, k:]) * (T / (T - k))
        return nll + self.aux_weight / len(self) * aux


TRICKS = (MTPHeads,)
