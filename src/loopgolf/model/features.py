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
    """Hashed bigram embedding (record (a) L308-317; model.bigram_buckets), added to the token
    embedding before the residual dtype cast:

        x += scale * proj(table[h(t_prev, t)])
        h = (36313 t XOR 27191 t_prev) mod (B-1), position 0 -> bucket B-1   (model.bigram_hash=xor)
        h = (92821 t_prev + t) mod B, t_prev = 0 at position 0   (mul: PR #927 L656-672)

    Inits: table ~ N(0, model.bigram_table_std) (0 = zeros), proj zero (transparent) or orthogonal
    with gain model.bigram_proj_gain (PR #1290), scale model.bigram_scale (0 = no scale parameter:
    PR #927). All decided at construction. Parameters: bigram.table.weight, bigram.proj.weight and,
    with a scale, bigram.scale."""

    field = "bigram_buckets"

    def __init__(self, buckets: int, dim: int, model_dim: int, hash_: str = "xor", scale: float = 0.05,
                 table_std: float = 0.02, proj_gain: float = 0.0):
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, model_dim, bias=False)
        if scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        self._out = self._scaled if scale else self._plain  # a bound method: no module alias
        self.bucket = {"xor": self._xor_bucket, "mul": self._mul_bucket}[hash_]
        if table_std:
            nn.init.normal_(self.table.weight, std=table_std)
        else:
            nn.init.zeros_(self.table.weight)
        if proj_gain:
            nn.init.orthogonal_(self.proj.weight, gain=proj_gain)
        else:
            nn.init.zeros_(self.proj.weight)

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        if not cfg.bigram_buckets:
            return None
        return cls(cfg.bigram_buckets, cfg.bigram_dim, cfg.dim, cfg.bigram_hash, cfg.bigram_scale,
                   cfg.bigram_table_std, cfg.bigram_proj_gain)

    def create(self):
        return {"bigram": self}

    def model_hooks(self):
        return {"token": self.add}

    def _xor_bucket(self, idx: torch.Tensor) -> torch.Tensor:
        prev = F.pad(idx[:, :-1], (1, 0))
        h = torch.bitwise_xor(36313 * idx, 27191 * prev) % (self.buckets - 1)
        h[:, 0] = self.buckets - 1
        return h

    def _mul_bucket(self, idx: torch.Tensor) -> torch.Tensor:
        prev = F.pad(idx[:, :-1].long(), (1, 0))
        return (prev * 92821 + idx.long()) % self.buckets

    def _plain(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def _scaled(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.proj(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._out(self.table(self.bucket(idx)))

    def add(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x + self(idx)


class SmearGate(Feature, nn.Module):
    """Static per-dimension token smear (record (a) L305-307; model.smear_gate):

        x_t <- (1 - s) x_t + s x_{t-1},  s = sigmoid(gate),  x_{-1} = 0

    The gate starts at model.smear_init (default -3: sigmoid = 0.05, mostly transparent). Default
    form: applied to the embedding after the dtype cast, before the first RMSNorm, and not where
    token t is BOS, so one document never leaks into the next (record (e)'s fix).
    model.smear_after_norm: PR #927's and #1290's form (L649, L807-809 of #927; L687-694 of #1290):
    applied after the embedding's rms_norm (x0 is the smeared stream) and without the BOS mask, gate
    init 0 there (s = 1/2). Parameter: smear.gate."""

    field = "smear_gate"

    def __init__(self, dim: int, init: float = -3.0, masked: bool = True):
        super().__init__()
        self.gate = nn.Parameter(torch.full((dim,), float(init)))
        self.masked = masked

    @classmethod
    def build(cls, cfg: ModelConfig, shape: ModelShape):
        return cls(cfg.dim, cfg.smear_init, masked=not cfg.smear_after_norm) if cfg.smear_gate else None

    def create(self):
        return {"smear": self}

    def model_hooks(self):
        return {"stream": self} if self.masked else {"normed": self.smear}

    def smear(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.gate).to(x.dtype)
        return (1 - s) * x + s * F.pad(x[:, :-1], (0, 0, 1, 0))

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.where((idx != BOS_ID).unsqueeze(-1), self.smear(x, idx), x)


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
