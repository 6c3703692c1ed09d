"""Input-side tricks: features of the token sequence added to the embedding before the first block.

Each is a module built only when its config field is on (model/wiring.py says how tricks plug in);
both start (nearly) transparent, so switching one on does not disturb a model at initialization.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.data.tokenizer import BOS_ID
from loopgolf.model.wiring import Feature, ModelShape


class BigramHash(Feature, nn.Module):
    """Hashed bigram embedding (record (a) L308-317; model.bigram_buckets):

        x += scale * proj(table[(36313 t XOR 27191 t_prev) mod (B-1)])   (position 0 -> bucket B-1)

    The projection starts at zero (transparent at initialization), scale at 0.05, table ~ N(0, 0.02).
    Added to the token embedding before the residual dtype cast. Parameters: bigram.table.weight,
    bigram.proj.weight, bigram.scale."""

    field = "bigram_buckets"

    def __init__(self, buckets: int, dim: int, model_dim: int):
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, model_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.05))
        nn.init.normal_(self.table.weight, std=0.02)
        nn.init.zeros_(self.proj.weight)

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg.bigram_buckets, cfg.bigram_dim, cfg.dim) if cfg.bigram_buckets else None

    def create(self):
        return {"bigram": self}

    def model_hooks(self):
        return {"token": self.add}

    def bucket(self, idx: torch.Tensor) -> torch.Tensor:
        prev = F.pad(idx[:, :-1], (1, 0))
        h = torch.bitwise_xor(36313 * idx, 27191 * prev) % (self.buckets - 1)
        h[:, 0] = self.buckets - 1
        return h

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.scale * self.proj(self.table(self.bucket(idx)))

    def add(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x + self(idx)


class SmearGate(Feature, nn.Module):
    """Static per-dimension token smear (record (a) L305-307; model.smear_gate):

        x_t <- (1 - s) x_t + s x_{t-1},  s = sigmoid(gate),  except where token t is BOS

    so one document never leaks into the next (record (e)'s fix). The gate starts at -3
    (sigmoid = 0.05, mostly transparent). Applied to the embedding after the dtype cast, before the
    first RMSNorm. Parameter: smear.gate."""

    field = "smear_gate"

    def __init__(self, dim: int, init: float = -3.0):
        super().__init__()
        self.gate = nn.Parameter(torch.full((dim,), init))

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg.dim) if cfg.smear_gate else None

    def create(self):
        return {"smear": self}

    def model_hooks(self):
        return {"stream": self}

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))
        smeared = (1 - s) * x + s * prev
        return torch.where((idx != BOS_ID).unsqueeze(-1), smeared, x)


class InputSmearGate(Feature, nn.Module):
    """Input-dependent SmearGate with the BOS fix (PR #1667 -> #1855 "BOS-fixed SmearGate",
    train_gpt.py L1243-1251 and L1332-1337; model.smear_window = w): each token adds the previous
    token's embedding, with a scalar gate computed from its own embedding's first w dims,

        x_t <- x_t + lam * sigmoid(W . x_t[:w]) * x_{t-1} * [token t != BOS]    (t >= 1; x_0 kept)

    W (1, w) and lam (1,) start at 0, so the gate is transparent at initialization. Unlike
    SmearGate above (record (a)): the gate is one scalar per token that depends on the input, not a
    static per-dim vector, and the previous token is added, not interpolated. The BOS mask is #1855's
    fix (without it the last token of document N leaks into document N+1's BOS embedding). Applied
    to the embedding after the dtype cast, before the first RMSNorm (#1855 applies it to tok_emb's
    output, then rms_norm). Parameters smear_in.weight, smear_in.lam (Adam at the scalar LR, fp32)."""

    field = "smear_window"

    def __init__(self, cfg: ModelConfig, shape: ModelShape):
        super().__init__()
        self.window = cfg.smear_window
        self.weight = nn.Parameter(torch.zeros(1, cfg.smear_window))
        self.lam = nn.Parameter(torch.zeros(1))

    def create(self):
        return {"smear_in": self}

    def model_hooks(self):
        return {"stream": self}

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        gate = self.lam.to(x.dtype) * torch.sigmoid(F.linear(x[:, 1:, :self.window], self.weight.to(x.dtype)))
        keep = (idx[:, 1:] != BOS_ID).to(x.dtype).unsqueeze(-1)
        return torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1] * keep], dim=1)


TRICKS = (BigramHash, SmearGate, InputSmearGate)
