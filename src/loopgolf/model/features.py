"""Optional input-side features of the records, each one small module built only when its config
field is on (the GPT holds None otherwise).

- BigramHash (record (a) L308-317): emb[(36313*t XOR 27191*t_prev) mod (B-1)] (position 0 -> B-1),
  projected to the model width and scaled (init 0.05); the projection starts at zero, so the feature
  is transparent at initialization.
- SmearGate (record (a) L305-307): x_t <- (1 - s) x_t + s x_{t-1} with s = sigmoid(g) per dimension,
  NOT applied at document starts (BOS), so one document never leaks into the next (record (e)'s fix).
- ValueInjection (record (a) L318-326, VE128): a vocab x ve_dim table projected to the KV width and
  added to the attention values of chosen virtual layers, with one learned scale per layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BOS_ID = 1


class BigramHash(nn.Module):
    def __init__(self, buckets: int, dim: int, model_dim: int):
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, model_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.05))
        nn.init.normal_(self.table.weight, std=0.02)
        nn.init.zeros_(self.proj.weight)

    def bucket(self, idx: torch.Tensor) -> torch.Tensor:
        prev = F.pad(idx[:, :-1], (1, 0))
        h = torch.bitwise_xor(36313 * idx, 27191 * prev) % (self.buckets - 1)
        h[:, 0] = self.buckets - 1
        return h

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.scale * self.proj(self.table(self.bucket(idx)))


class SmearGate(nn.Module):
    def __init__(self, dim: int, init: float = -3.0):
        super().__init__()
        # starts mostly transparent (sigmoid(-3) = 0.05); the records learn the mix from there
        self.gate = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))
        smeared = (1 - s) * x + s * prev
        return torch.where((idx != BOS_ID).unsqueeze(-1), smeared, x)


class ValueInjection(nn.Module):
    def __init__(self, vocab: int, ve_dim: int, kv_dim: int, n_slots: int):
        super().__init__()
        self.table = nn.Embedding(vocab, ve_dim)
        self.proj = nn.Linear(ve_dim, kv_dim, bias=False)
        self.scales = nn.Parameter(torch.zeros(n_slots))  # zero: transparent at initialization
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(idx))
