"""GPT whose depth is driven by a recurrence plan.

    x0 = rms_norm(tok_emb[idx]);  x = x0
    for v, b in enumerate(plan.schedule):          # virtual layer v runs physical block b
        decoder half: x += skip_weights[j] * skips.pop()   (U-Net over the virtual sequence)
        x = blocks[b](x, x0)
        encoder half: skips.append(x)
    logits = 30 * tanh((rms_norm(x) @ W_emb^T) / 30)       # tied embeddings, logit softcap

Parameter names (an API, matched by train/optim.py and compress/quant.py):
    tok_emb.weight            (vocab, dim)   input embedding, also the output head when tied
    lm_head.weight            (vocab, dim)   only when model.tie_embeddings is false
    blocks.{i}.attn.c_q|c_k|c_v|proj.weight, blocks.{i}.attn.q_gain
    blocks.{i}.mlp.fc|proj.weight, blocks.{i}.attn_scale|mlp_scale|resid_mix
    skip_weights              (n_skips, dim) U-Net skip gains, ones-init (baseline L670-673)
`forward` returns per-token cross-entropy in nats (float32), the one quantity both training and the
exact bpb evaluation need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import Block, rms_norm
from loopgolf.model.recurrence import RecurrencePlan, parse_plan


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.plan: RecurrencePlan = parse_plan(cfg.plan)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(self.plan.n_blocks))
        n_skips = self.plan.n_skips if cfg.unet_skips else 0
        self.n_encoder = self.plan.n_encoder if n_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(n_skips, cfg.dim)) if n_skips else None
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.embed_init_std)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.fc):
                # nn.Linear's default (Kaiming-uniform), as the baseline's CastedLinear keeps it
                lin.reset_parameters()
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        if torch.is_autocast_enabled(x.device.type):
            # the residual stream runs in the autocast dtype (bf16), as the baseline's bf16 model
            # does; weights stay fp32 masters. Without this cast every elementwise op runs in fp32.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = rms_norm(x)
        x0 = x
        skips: list[torch.Tensor] = []
        for v, b in enumerate(self.plan.schedule):
            if v >= self.n_encoder and skips:
                j = v - self.n_encoder
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            x = self.blocks[b](x, x0)
            if v < self.n_encoder:
                skips.append(x)
        return rms_norm(x)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Softcapped float32 logits, (B, T, vocab)."""
        h = self.hidden(idx)
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, w.to(h.dtype)).float()
        c = self.cfg.logit_softcap
        return c * torch.tanh(logits / c) if c > 0 else logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy in nats, float32, shape (B, T)."""
        logits = self.logits(idx)
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return nll.view(targets.shape)
