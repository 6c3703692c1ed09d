"""GPT whose depth is driven by a recurrence plan (model/recurrence.py).

    x0 = rms_norm(tok_emb[idx] (+ bigram) (smeared));  x = x0
    for spec in layer_specs(plan):                 # virtual layer spec.v runs block spec.block
        decoder half: x += skip_weights[j] * skips.pop()    (U-Net over the virtual sequence;
                      or x = lerp(w*skip, x, sigmoid(skip_gates[j])) when model.skip_gated)
        x += loop_embed[v] + sum_k ve_scales[v,k] * value_embeds[k][idx]
             + cross_repeat_scales[block, visit-1] * (this block's output on its previous visit)
        x = blocks[block](x, x0, spec, controls, v_injection)
        encoder half: skips.append(x)
    logits = 30 * tanh((rms_norm(x) @ W_emb^T) / 30)       # tied embeddings, logit softcap

Every optional term is a parameter that exists only when its config field is on. The plan can change
during training (model.plan_stages: loops switched on, progressive depth); each stage is one static
graph, selected by `select_stage`, and parameters are sized for the deepest stage.

Parameter names (an API, matched by train/optim.py and compress/quant.py):
    tok_emb.weight, lm_head.weight (untied only), skip_weights, skip_gates,
    blocks.{i}.attn.c_q|c_k|c_v|proj.weight, blocks.{i}.attn.q_gain, blocks.{i}.mlp.fc|proj.weight,
    blocks.{i}.attn_scale|mlp_scale|resid_mix        (or layer_attn_scale|layer_mlp_scale|layer_resid_mix)
    loop_embed, cross_repeat_scales, value_embeds.{k}.weight, ve_scales, repeat_mlps.{k}.fc|proj.weight,
    bigram.table.weight, bigram.proj.weight, bigram.scale, smear.gate,
    ve_inject.table.weight, ve_inject.proj.weight, ve_inject.scales
`forward` returns per-token cross-entropy in nats (float32), the one quantity both training and the
exact bpb evaluation need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model.blocks import MLPS, Block, rms_norm
from loopgolf.model.features import BigramHash, SmearGate, ValueInjection
from loopgolf.model.recurrence import Stage, layer_specs, parse_int_list, parse_plan, parse_stages


def _param(shape, fill: float) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, fill))


class MTPHead(nn.Module):
    """Multi-token prediction: a projection whose normalized output goes through the tied
    unembedding to predict a token further ahead. Training-only: the artifact never carries it."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.stages: tuple[Stage, ...] = parse_stages(cfg.plan_stages, cfg.plan)
        self.ve_layers = parse_int_list(cfg.ve_layers)
        self._specs = [self._layer_specs(st.plan) for st in self.stages]
        self.stage = len(self.stages) - 1  # the final plan; the trainer selects earlier stages
        plans = [st.plan for st in self.stages]
        final = plans[-1]
        n_virtual = max(p.n_virtual for p in plans)
        d = cfg.dim

        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(final.n_blocks))
        n_skips = max(p.n_skips for p in plans) if cfg.unet_skips else 0
        self.skip_weights = _param((n_skips, d), 1.0) if n_skips else None
        self.skip_gates = _param((n_skips, d), 0.0) if n_skips and cfg.skip_gated else None
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.per_layer_scales:
            self.layer_attn_scale = _param((n_virtual, d), 1.0)
            self.layer_mlp_scale = _param((n_virtual, d), 1.0)
            self.layer_resid_mix = nn.Parameter(torch.stack([torch.ones(n_virtual, d), torch.zeros(n_virtual, d)], 1))
        self.loop_embed = _param((n_virtual, d), 0.0) if cfg.loop_embed else None
        max_visits = max(max(p.visit_index) for p in plans) + 1
        self.cross_repeat_scales = (_param((final.n_blocks, max_visits - 1, d), 0.0)
                                    if cfg.cross_repeat and max_visits > 1 else None)
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, d) for _ in range(cfg.value_embeds))
        self.ve_scales = _param((n_virtual, cfg.value_embeds, d), 0.0) if cfg.value_embeds else None
        self.bigram = BigramHash(cfg.bigram_buckets, cfg.bigram_dim, d) if cfg.bigram_buckets else None
        self.smear = SmearGate(d) if cfg.smear_gate else None
        kv_dim = cfg.n_kv_heads * (d // cfg.n_heads)
        self.ve_inject = (ValueInjection(cfg.vocab_size, cfg.ve_dim, kv_dim, len(self.ve_layers))
                          if cfg.ve_dim else None)
        # repeated visits with their own MLP (record (a) REPEAT_UNTIE_MLP): one per (block, visit>0)
        self._repeat_keys = sorted({(s.block, s.visit) for specs in self._specs for s in specs if s.visit > 0}
                                   ) if cfg.untie_repeat_mlp else []
        self.repeat_mlps = nn.ModuleList(MLPS[cfg.mlp](cfg) for _ in self._repeat_keys)
        r = cfg.lora_rank
        if r:  # per-virtual-layer LoRA on q/k/v/o: A random, B zero, so each starts as a no-op
            for name, d_in, d_out in (("q", d, d), ("k", d, kv_dim), ("v", d, kv_dim), ("o", d, d)):
                setattr(self, f"lora_{name}_a", nn.Parameter(torch.randn(n_virtual, r, d_in) / d_in ** 0.5))
                setattr(self, f"lora_{name}_b", _param((n_virtual, d_out, r), 0.0))
        self.mtp_heads = nn.ModuleList(MTPHead(d) for _ in range(cfg.mtp_heads))
        self.init_weights()

    def _layer_specs(self, plan):
        c = self.cfg
        return layer_specs(plan, xsa_last=c.xsa_last, ln_scale=c.ln_scale, parallel_from=c.parallel_from,
                           ve_layers=self.ve_layers if c.ve_dim else ())

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.embed_init_std)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.fc):
                lin.reset_parameters()  # nn.Linear's default, as the baseline's CastedLinear keeps it
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        for mlp in self.repeat_mlps:
            nn.init.zeros_(mlp.proj.weight)
        for emb in self.value_embeds:
            nn.init.normal_(emb.weight, std=self.cfg.embed_init_std)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token of the running plan (forward + backward = 3 x forward): 6 per
        matmul weight per visit, plus causal attention's QK^T and AV (6 * T * d per layer, halved by
        the mask: the convention of the PaLM/nanoGPT MFU estimates)."""
        linear = 0
        for spec in self._specs_now():
            block = self.blocks[spec.block]
            mlp = self._repeat_mlp(spec.block, spec.visit) or block.mlp
            linear += sum(m.weight.numel() for m in (block.attn.c_q, block.attn.c_k, block.attn.c_v,
                                                      block.attn.proj, mlp.fc, mlp.proj))
        head = self.tok_emb.weight.numel()
        attn = 6 * seq_len * self.cfg.dim * len(self._specs_now())
        return 6.0 * (linear + head) + attn

    @property
    def plan(self):
        return self.stages[self.stage].plan

    def select_stage(self, frac: float, step: int) -> bool:
        """Pick the plan for this point of the run; True if it changed (the graph changes too)."""
        from loopgolf.model.recurrence import stage_index

        new = stage_index(self.stages[: len(self._specs)], frac, step)
        changed, self.stage = new != self.stage, new
        return changed

    def set_eval_plan(self, spec: str) -> None:
        """Run a trained model with another plan (e.g. more loops at evaluation). Per-virtual-layer
        parameters of layers beyond the trained depth reuse the deepest trained ones."""
        plan = parse_plan(spec)
        if plan.n_blocks != len(self.blocks):
            raise ValueError(f"eval plan {spec!r} uses {plan.n_blocks} blocks; the model has {len(self.blocks)}")
        self.stages = self.stages[: len(self._specs)] + (Stage(plan),)
        self._eval_specs = self._layer_specs(plan)
        self.stage = len(self.stages) - 1

    def _specs_now(self):
        return self._specs[self.stage] if self.stage < len(self._specs) else self._eval_specs

    def _controls(self, block: Block, v: int):
        if not self.cfg.per_layer_scales:
            return block.controls()
        i = min(v, self.layer_attn_scale.size(0) - 1)
        return self.layer_attn_scale[i], self.layer_mlp_scale[i], self.layer_resid_mix[i]

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx)
        if torch.is_autocast_enabled(x.device.type):
            # the residual stream runs in the autocast dtype (bf16), as the baseline's bf16 model
            # does; weights stay fp32 masters. Without this cast every elementwise op runs in fp32.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.smear is not None:
            x = self.smear(x, idx)
        x = rms_norm(x)
        x0 = x
        ves = [emb(idx).to(x.dtype) for emb in self.value_embeds]
        v_inj = self.ve_inject(idx) if self.ve_inject is not None else None
        specs = self._specs_now()
        n_enc = len(specs) // 2 if self.skip_weights is not None else 0
        skips: list[torch.Tensor] = []
        prev_out: dict[int, torch.Tensor] = {}
        for spec in specs:
            v, b = spec.v, spec.block
            if v >= n_enc and skips:
                j = min(v - n_enc, self.skip_weights.size(0) - 1)
                s = self.skip_weights[j].to(x.dtype) * skips.pop()
                x = x + s if self.skip_gates is None else torch.lerp(s, x, torch.sigmoid(self.skip_gates[j]).to(x.dtype))
            vi = min(v, self.loop_embed.size(0) - 1) if self.loop_embed is not None else 0
            if self.loop_embed is not None:
                x = x + self.loop_embed[vi].to(x.dtype)
            for k, ve in enumerate(ves):
                x = x + self.ve_scales[min(v, self.ve_scales.size(0) - 1), k].to(x.dtype) * ve
            if self.cross_repeat_scales is not None and spec.visit > 0 and b in prev_out:
                r = min(spec.visit, self.cross_repeat_scales.size(1)) - 1
                x = x + self.cross_repeat_scales[b, r].to(x.dtype) * prev_out[b]
            v_extra = (self.ve_inject.scales[spec.ve_slot].to(x.dtype) * v_inj.to(x.dtype)
                       if spec.ve_slot >= 0 and v_inj is not None else None)
            block = self.blocks[b]
            x = block(x, x0, spec, self._controls(block, v), v_extra, self._repeat_mlp(b, spec.visit),
                      self._lora(v))
            if self.cross_repeat_scales is not None:
                prev_out[b] = x
            if v < n_enc:
                skips.append(x)
        return rms_norm(x)

    def _lora(self, v: int) -> tuple[torch.Tensor, ...] | None:
        if not self.cfg.lora_rank:
            return None
        i = min(v, self.lora_q_a.size(0) - 1)
        return tuple(getattr(self, f"lora_{n}_{ab}")[i] for n in "qkvo" for ab in "ab")

    def _repeat_mlp(self, block: int, visit: int) -> nn.Module | None:
        if visit == 0 or not self._repeat_keys:
            return None
        keys = [k for k in self._repeat_keys if k[0] == block and k[1] <= visit]
        return self.repeat_mlps[self._repeat_keys.index(keys[-1])] if keys else None

    def _unembed(self, h: torch.Tensor) -> torch.Tensor:
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, w.to(h.dtype)).float()
        c = self.cfg.logit_softcap
        return c * torch.tanh(logits / c) if c > 0 else logits

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Softcapped float32 logits, (B, T, vocab)."""
        return self._unembed(self.hidden(idx))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy in nats, float32, shape (B, T). In training mode with MTP heads,
        each position also carries mtp_weight x the mean auxiliary loss of predicting t+1+k."""
        h = self.hidden(idx)
        logits = self._unembed(h)
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        nll = nll.view(targets.shape)
        if not (self.training and len(self.mtp_heads)):
            return nll
        aux = torch.zeros_like(nll)
        for k, head in enumerate(self.mtp_heads, start=1):  # targets[:, t+k] is the token at t+1+k
            lk = self._unembed(rms_norm(head.proj(h[:, :-k])))
            ce = F.cross_entropy(lk.reshape(-1, lk.size(-1)), targets[:, k:].reshape(-1), reduction="none")
            aux[:, :-k] += ce.view(targets.size(0), -1)
        return nll + self.cfg.mtp_weight / len(self.mtp_heads) * aux
