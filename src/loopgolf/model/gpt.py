"""GPT whose depth is driven by a recurrence plan (model/recurrence.py) and whose optional tricks are
decided at construction (model/wiring.py), so the forward pass is a plain loop:

    x = tok_emb[idx];  x = token tricks(x)  (BigramHash);  x = bf16 under autocast
    x0 = x = normed tricks(in_norm(stream tricks(x)))     (SmearGate: before or after the norm;
                                                            in_norm = rms_norm, or none: model.block)
    for layer in layers(stage):              # one per virtual layer: its block and its ops
        x = pre ops(x)                       (U-Net skip pop, loop embedding, value embeds, cross-repeat)
        x = layer.block(x, ctx, layer)       (per-layer controls, norm, residual, MLP, attention ops)
        x = post ops(x)                      (U-Net skip push, cross-repeat record)
    logits = 30 * tanh((final_norm(x) @ W_emb^T) / 30)     # tied embeddings, logit softcap
    nll (+ loss tricks: MTP heads in training)

The head (model/logit_head.py) is picked at construction: the cap (symmetric softcap, or AsymLogit)
and the loss path (plain logits + F.cross_entropy, or model.fused_ce's chunked fused_ce.py).

Training may change the plan (model.plan_stages: loops switched on, progressive depth): `GPT.stages`
holds one plan per stage; the trainer passes the stage index, `forward(idx, targets, stage)`, and each
stage is one static graph under torch.compile. Parameters are sized for every stage's slots;
`GPT.at(plan)` runs another plan (e.g. `model.plan.with_loops(6)`) on the same weights.

Parameter names (an API, matched by train/optim.py and compress/quant.py):
    tok_emb.weight, lm_head.weight (untied only), skip_weights, skip_gates,
    blocks.{i}.attn.c_q|c_k|c_v|proj.weight, blocks.{i}.attn.q_gain, blocks.{i}.mlp.fc|proj.weight,
    blocks.{i}.attn_scale|mlp_scale|resid_mix        (or layer_attn_scale|layer_mlp_scale|layer_resid_mix)
    blocks.{i}.attn_norm|mlp_norm.weight, final_norm.weight (model.block=plain_prenorm), recurrence_scales,
    loop_embed, cross_repeat_scales, value_embeds.{k}.weight, ve_scales, repeat_mlps.{k}.fc|proj.weight,
    bigram.table.weight, bigram.proj.weight, bigram.scale, smear.gate,
    ve_inject.table.weight, ve_inject.proj.weight, ve_inject.scales, ve_inject.scale,
    lora.{q,k,v,o}_{a,b}, mtp_heads.{k}.proj.weight (training-only),
    logit_cap.softcap_pos|softcap_neg (AsymLogit)
`forward` returns per-token cross-entropy in nats (float32), the one quantity both training and the
exact bpb evaluation need.
"""
from __future__ import annotations

import torch
from torch import nn

from loopgolf.config import ModelConfig
from loopgolf.model import attention_tricks, features, fp8, heads, layer_tricks, logit_head, stream
from loopgolf.model.blocks import BLOCKS, RMSNorm, WeightlessNorm, float32_stream, to_stream_dtype
from loopgolf.model.recurrence import RecurrencePlan, Stage, parse_stages
from loopgolf.model.wiring import MODEL_HOOKS, Context, Layer, ModelShape, wire

# Registry order is the order of each hook's ops (e.g. the U-Net skip is added before the loop embedding).
TRICKS = stream.TRICKS + features.TRICKS + attention_tricks.TRICKS + layer_tricks.TRICKS + heads.TRICKS


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.stages: tuple[Stage, ...] = parse_stages(cfg.plan_stages, cfg.plan)
        self.shape = ModelShape.of(cfg, [st.plan for st in self.stages])
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(BLOCKS[cfg.block](cfg) for _ in range(self.shape.n_blocks))
        if cfg.fp8:
            fp8.convert_linears(self.blocks)
        # the baseline normalizes the embedding and the final stream without weights; PR #29's plain
        # pre-norm model (model.block=plain_prenorm) feeds the raw embedding and ends in a learned norm
        plain = cfg.block == "plain_prenorm"
        self.in_norm = nn.Identity() if plain else WeightlessNorm()
        self.final_norm = RMSNorm(cfg.dim) if plain else WeightlessNorm()
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._to_stream = float32_stream if cfg.fp32_stream else to_stream_dtype
        self.logit_cap, self._head = logit_head.build(cfg)
        self._features = [f for cls in TRICKS if (f := cls.build(cfg, self.shape)) is not None]
        self._training_only: list[str] = []
        hooks: dict[str, list] = {h: [] for h in MODEL_HOOKS}
        for f in self._features:
            for name, member in f.create().items():
                if isinstance(member, nn.Parameter):
                    self.register_parameter(name, member)
                else:
                    self.register_module(name, member)
                self._training_only += [name] if f.training_only else []
            for hook, op in f.model_hooks().items():
                hooks[hook].append(op)
        self._token, self._stream, self._normed, self._loss = (tuple(hooks[h]) for h in MODEL_HOOKS)
        self._stage_layers = tuple(self._wire(st.plan) for st in self.stages)
        self.init_weights()

    def _wire(self, plan: RecurrencePlan) -> tuple[Layer, ...]:
        return wire(plan, self.blocks, self._features, lambda block: block.default_ops())

    @torch.no_grad()
    def init_weights(self) -> None:
        """Core weights, then each trick's `init_weights` (most tricks initialize in their
        constructor). This order keeps the random draws of a seed as they were before the tricks
        became modules, so a seed still gives the same initial weights."""
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.embed_init_std)
        for block in self.blocks:  # PR #29's N(0, std) init, if chosen, is a trick (NormalInit)
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.fc):
                lin.reset_parameters()  # nn.Linear's default, as the baseline's CastedLinear keeps it
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)
        for f in self._features:
            f.init_weights(self)

    # --- the API: stages, eval-time plans, shipped weights ---------------------------------------
    @property
    def plan(self) -> RecurrencePlan:
        """The final (trained) plan."""
        return self.stages[-1].plan

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, stage: int = -1) -> torch.Tensor:
        """Per-token cross-entropy in nats, float32, shape (B, T), running plan `self.stages[stage]`.
        In training mode with MTP heads each position also carries the auxiliary loss."""
        return self._loss_of(idx, targets, self._stage_layers[stage])

    def logits(self, idx: torch.Tensor, stage: int = -1) -> torch.Tensor:
        """Softcapped float32 logits, (B, T, vocab)."""
        return self.unembed(self._hidden(idx, self._stage_layers[stage]))

    def hidden(self, idx: torch.Tensor, stage: int = -1) -> torch.Tensor:
        """The final normalized hidden states (B, T, dim) that unembed / nll take (eval-time head
        adapters, eval/lora.py)."""
        return self._hidden(idx, self._stage_layers[stage])

    def at(self, plan: RecurrencePlan) -> PlanView:
        """A view sharing these weights that runs `plan` (eval-time depth: `self.plan.with_loops(k)`).
        ValueError if the plan needs blocks or parameter slots this model does not have."""
        return PlanView(self, plan)

    def flops_per_token(self, seq_len: int, stage: int = -1) -> float:
        return _flops(self, self._stage_layers[stage], seq_len)

    def shipped_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the tensors an artifact carries (training-only heads dropped)."""
        drop = tuple(f"{name}." for name in self._training_only)
        return {k: v.detach().cpu() for k, v in self.state_dict().items()
                if not k.startswith(drop) and k not in self._training_only}

    # --- the forward pass ------------------------------------------------------------------------
    def _hidden(self, idx: torch.Tensor, layers: tuple[Layer, ...]) -> torch.Tensor:
        x = self.tok_emb(idx)
        for op in self._token:
            x = op(x, idx)
        x = self._to_stream(x)
        for op in self._stream:
            x = op(x, idx)
        x = self.in_norm(x)
        for op in self._normed:
            x = op(x, idx)
        ctx = Context(self, idx, x)
        for layer in layers:
            for op in layer.pre:
                x = op(x, ctx)
            x = layer.block(x, ctx, layer)
            for op in layer.post:
                x = op(x, ctx)
        return self.final_norm(x)

    def head_weight(self) -> torch.Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Capped float32 logits of final hidden states h (..., dim), already normalized."""
        return self._head.logits(h, self.head_weight())

    def nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy (float32, shape of `targets`) of unembed(h) against `targets`,
        by the head chosen at construction (model.fused_ce: never the full logits tensor)."""
        return self._head.nll(h, self.head_weight(), targets)

    def _loss_of(self, idx: torch.Tensor, targets: torch.Tensor, layers: tuple[Layer, ...]) -> torch.Tensor:
        h = self._hidden(idx, layers)
        nll = self.nll(h, targets)
        for op in self._loss:
            nll = op(nll, h, targets, self)
        return nll


class PlanView(nn.Module):
    """GPT.at(plan): the GPT's weights (a registered child, so .eval()/.parameters() reach them)
    running another plan, with the same forward/logits/flops_per_token as the GPT."""

    def __init__(self, model: GPT, plan: RecurrencePlan):
        super().__init__()
        model.shape.check(plan)
        self.model, self.plan = model, plan
        self._layers = model._wire(plan)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model._loss_of(idx, targets, self._layers)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.unembed(self.model._hidden(idx, self._layers))

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model._hidden(idx, self._layers)

    def head_weight(self) -> torch.Tensor:
        return self.model.head_weight()

    @property
    def logit_cap(self) -> nn.Module:
        return self.model.logit_cap

    def flops_per_token(self, seq_len: int) -> float:
        return _flops(self.model, self._layers, seq_len)


def _flops(model: GPT, layers: tuple[Layer, ...], seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward): 6 per matmul weight per visit,
    plus causal attention's QK^T and AV (6 * T * d per layer, halved by the mask: the convention of
    the PaLM/nanoGPT MFU estimates)."""
    linear = 0
    for layer in layers:
        attn = layer.block.attn
        linear += sum(m.weight.numel() for m in (attn.c_q, attn.c_k, attn.c_v, attn.proj,
                                                  layer.mlp.fc, layer.mlp.proj))
    head = model.tok_emb.weight.numel()
    return 6.0 * (linear + head) + 6 * seq_len * model.cfg.dim * len(layers)
