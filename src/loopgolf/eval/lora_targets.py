"""Where LoRA TTT attaches its adapters (eval.lora_targets) and how often each site runs per forward.

A site is a module whose forward gets `out + scale * (x A^T) B^T`, x its first input (eval/lora.py),
or the LM head. Kinds (config_eval.LORA_TARGET_KINDS), found by module type and attribute name:
  * q, k, v, proj: an Attention's c_q, c_k, c_v, proj Linears; fc, mlp_proj: an MLP's fc, proj;
    other: every other nn.Linear (value-embedding and bigram projections, an untied lm_head, ...).
    "all" (the default) = every nn.Linear, in model.modules() order, as LoRA TTT did before targets.
  * o: PR #1855's attention-output adapter (train_gpt.py L1558-1559: o_lora(n) added to the
    attention output, n = the block's normalized attention input): a site on the Attention module,
    whose input is n and whose output is the projected attention output (dim -> dim).
  * mlp: PR #1855's MLP adapter (L1563-1564: mlp_lora(mlp_n) added to the MLP output): a site on the
    MLP module (dim -> dim). Repeat MLPs (model.repeat_mlps) are MLPs too.
  * head: PR #1855's lm_head_lora (L1502: added to the logits before the softcap), input the final
    normalized hidden state, output the vocabulary; not a module hook (the tied head runs
    F.linear(h, tok_emb.weight)): eval/lora.LoRA computes it through GPT.hidden and GPT.logit_cap.
The published rows: #1855 "q,k,v,o,mlp,head"; #1953/#2014 without Q/V "k,o,mlp,head"
(TTT_MASK=no_qv); #2135 without K "q,v,o,mlp,head" (TTT_K_LORA=0).

Per-visit adapters (eval.lora_per_visit, PR #1855 L1675-1705: one adapter set per virtual layer):
a looped block's modules run once per visit, so `count_visits` runs one probe forward and counts
the calls of every site; eval/lora.LoRA then keeps that many adapters per site and picks the k-th
on the k-th call of a forward (a counter reset per forward). The model code is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loopgolf.config_eval import parse_lora_targets
from loopgolf.model.blocks import Attention, ReluSquaredMLP, SwiGLUMLP

MLP_TYPES = (ReluSquaredMLP, SwiGLUMLP)
_ATTN_LINEARS = {"c_q": "q", "c_k": "k", "c_v": "v", "proj": "proj"}
_MLP_LINEARS = {"fc": "fc", "proj": "mlp_proj"}


class LoRATargetError(ValueError):
    """eval.lora_targets asks for a site this model does not have."""


@dataclass
class Site:
    kind: str
    name: str  # the module's qualified name ("" for the head)
    module: nn.Module | None  # None for the head
    in_features: int
    out_features: int


def linear_kind(parent: nn.Module | None, attr: str) -> str:
    """The kind of an nn.Linear stored as `parent.<attr>`."""
    if isinstance(parent, Attention) and attr in _ATTN_LINEARS:
        return _ATTN_LINEARS[attr]
    if isinstance(parent, MLP_TYPES) and attr in _MLP_LINEARS:
        return _MLP_LINEARS[attr]
    return "other"


def _dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a block-level site: dim -> dim (the Linear that reads the input and the one that
    writes the output)."""
    first = module.c_q if isinstance(module, Attention) else module.fc
    return first.in_features, module.proj.out_features


def adapter_sites(model: nn.Module, spec: str) -> list[Site]:
    """The sites of eval.lora_targets `spec` in model.named_modules() order, the head last."""
    kinds = set(parse_lora_targets(spec))
    mods = dict(model.named_modules())
    sites = []
    for name, m in model.named_modules():
        parent_name, _, attr = name.rpartition(".")
        if isinstance(m, nn.Linear):
            kind = linear_kind(mods.get(parent_name) if name else None, attr)
            if kind in kinds:
                sites.append(Site(kind, name, m, m.in_features, m.out_features))
        elif isinstance(m, Attention) and "o" in kinds:
            sites.append(Site("o", name, m, *_dims(m)))
        elif isinstance(m, MLP_TYPES) and "mlp" in kinds:
            sites.append(Site("mlp", name, m, *_dims(m)))
    if "head" in kinds:
        if not all(hasattr(model, a) for a in ("hidden", "head_weight", "logit_cap")):
            raise LoRATargetError(f"eval.lora_targets={spec!r}: 'head' needs a GPT (hidden, head_weight, "
                                  f"logit_cap); {type(model).__name__} has none: drop 'head'")
        w = model.head_weight()
        sites.append(Site("head", "", None, w.shape[1], w.shape[0]))
    explicit = {t.strip() for t in spec.split(",")} - {"all"}  # "all" takes whatever Linears there are
    missing = explicit - {s.kind for s in sites}
    if missing or not sites:
        what = ", ".join(sorted(missing)) or "nn.Linear layers or other sites"
        raise LoRATargetError(f"eval.lora_targets={spec!r}: the model ({type(model).__name__}) has no "
                              f"{what} to adapt; choose among the kinds it has")
    return sites


@torch.no_grad()
def count_visits(model: nn.Module, modules: list[nn.Module], device: torch.device) -> list[int]:
    """How many times each module runs in one eval forward of `model` (a probe of 2 tokens through
    model.logits): a block looped three times runs its modules three times."""
    if not hasattr(model, "logits"):
        raise LoRATargetError(f"eval.lora_per_visit: {type(model).__name__} has no logits(idx) to probe "
                              "the visits with; turn eval.lora_per_visit off")
    counts = [0] * len(modules)

    def counter(i: int):
        def hook(mod, inp, out):
            counts[i] += 1
        return hook

    handles = [m.register_forward_hook(counter(i)) for i, m in enumerate(modules)]
    was_training = model.training
    try:
        model.eval()
        model.logits(torch.zeros(1, 2, dtype=torch.int64, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts
