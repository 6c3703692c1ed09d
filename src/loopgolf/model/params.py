"""The parameter table: one row per kind of tensor, read by the optimizer, the artifact and QAT/GPTQ/LQER.

Each row of PARAM_KINDS names a kind by a name pattern (re.fullmatch, plus optional conditions on
ndim and on being a float tensor) and says, for tensors of that kind:
  - optimizer: "muon" (Newton-Schulz orthogonalized momentum) or "adam" (AdamW); "none" = not trained;
  - lr / wd: the OptimConfig fields holding its base learning rate and decoupled weight decay
    (lr_untied: the lr field used instead when model.tie_embeddings is false);
  - storage: how the artifact stores it (compress/rules.py resolves it to a scheme):
      matrix        small (<= quant.passthrough_max_numel) -> fp16; large 2-D -> quant.scheme (or its
                    quant.bits_rules pattern); other large -> int8_tensor   (the challenge baseline)
      control_fp32  small -> fp32 (the baseline's CONTROL_TENSOR_NAME_PATTERNS); large -> as matrix
      fp16 | fp32 | int8_tensor | raw   always that scheme
      none          never shipped (training-only tensors)
  - stream: the artifact's compression stream role (tensors of one role compress together);
  - averaged: whether EMA/SWA averages it; training_only: dropped from the artifact (MTP heads).
Every parameter (and every state-dict entry) must match exactly one row: `kinds_of` raises one
ValueError listing every offender, so a new tensor without a row fails loudly instead of landing in
a default group (modded-nanogpt's param_table; the baseline's CONTROL_TENSOR_NAME_PATTERNS).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

OPTIMIZERS = ("muon", "adam", "none")
STORAGE = ("matrix", "control_fp32", "fp16", "fp32", "int8_tensor", "raw", "none")


@dataclass(frozen=True)
class ParamKind:
    kind: str
    pattern: str  # re.fullmatch on the tensor name
    optimizer: str  # muon | adam | none
    lr: str  # OptimConfig field of the base learning rate ("" when not trained)
    wd: str  # OptimConfig field of the decoupled weight decay ("" = none)
    storage: str  # one of STORAGE
    stream: str  # artifact stream role
    averaged: bool = True
    training_only: bool = False
    ndim: int | None = None  # shape condition; None = any
    floating: bool = True  # float tensors only (False: non-float only)
    lr_untied: str = ""  # lr field when model.tie_embeddings is false ("" = same as lr)

    def matches(self, name: str, t: torch.Tensor) -> bool:
        if t.is_floating_point() != self.floating:
            return False
        if self.ndim is not None and t.ndim != self.ndim:
            return False
        return re.fullmatch(self.pattern, name) is not None

    def lr_field(self, tie_embeddings: bool) -> str:
        return self.lr_untied if self.lr_untied and not tie_embeddings else self.lr


_PREFIX = r"(?:.*\.)?"  # any module path in front (blocks.3., repeat_mlps.0., ...)
CONTROL_NAMES = (r"(?:layer_)?(?:attn_scale|mlp_scale|resid_mix)", r"q_gain", r"skip_weights",
                 r"skip_gates", r"loop_embed", r"cross_repeat_scales", r"ve_scales", r"bigram\.scale",
                 r"smear\.gate", r"ve_inject\.scales?", r"recurrence_scales")

PARAM_KINDS: tuple[ParamKind, ...] = (
    ParamKind("embedding", r"(?:tok_emb|value_embeds\.\d+|bigram\.table|ve_inject\.table)\.weight",
              "adam", "tied_embed_lr", "embed_weight_decay", "matrix", "embed", ndim=2,
              lr_untied="embed_lr"),
    ParamKind("head", r"lm_head\.weight", "adam", "head_lr", "adam_weight_decay", "matrix", "embed",
              ndim=2),
    ParamKind("attn_matrix", _PREFIX + r"attn\.(?:c_q|c_k|c_v|proj)\.weight", "muon", "matrix_lr",
              "weight_decay", "matrix", "attn", ndim=2),
    ParamKind("mlp_matrix", _PREFIX + r"(?:mlp|repeat_mlps\.\d+)\.(?:fc|proj)\.weight", "muon",
              "matrix_lr", "weight_decay", "matrix", "mlp", ndim=2),
    ParamKind("feature_matrix", r"(?:bigram|ve_inject)\.proj\.weight", "muon", "matrix_lr",
              "weight_decay", "matrix", "feature", ndim=2),
    # (n_virtual, rows, cols) stacks; Muon orthogonalizes each matrix (PR #21's topology)
    ParamKind("lora", _PREFIX + r"lora\.[qkvo]_[ab]", "muon", "matrix_lr", "weight_decay", "matrix",
              "lora", ndim=3),
    ParamKind("mtp_head", r"mtp_heads\.\d+\.proj\.weight", "muon", "matrix_lr", "weight_decay",
              "none", "", ndim=2, training_only=True),
    # AsymLogit's two caps (model/logit_head.py); lr 0 by default = frozen in training (PR #1923)
    ParamKind("logit_cap", r"logit_cap\.softcap_(?:pos|neg)", "adam", "asym_logit_lr", "",
              "control_fp32", "control", ndim=0),
    ParamKind("control", _PREFIX + "(?:" + "|".join(CONTROL_NAMES) + ")", "adam", "scalar_lr",
              "adam_weight_decay", "control_fp32", "control"),
    # learned RMSNorm weights of model.block=plain_prenorm (PR #29: trained and stored as every tensor)
    ParamKind("norm", _PREFIX + r"(?:attn_norm|mlp_norm|final_norm)\.weight", "adam", "scalar_lr",
              "adam_weight_decay", "control_fp32", "control", ndim=1),
    # frontier gates and lane mixes (PR #1855: routed to the scalar AdamW by its control patterns)
    ParamKind("frontier_control", r"lane_post|lane_resid|attn_gate\.weight|smear_in\.(?:weight|lam)",
              "adam", "scalar_lr", "adam_weight_decay", "control_fp32", "control"),
    ParamKind("integer_buffer", r".*", "none", "", "", "raw", "buffer", averaged=False,
              floating=False),
)


def _describe(name: str, t: torch.Tensor) -> str:
    return f"{name} {str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def kinds_of(named: Iterable[tuple[str, torch.Tensor]],
             kinds: tuple[ParamKind, ...] = PARAM_KINDS) -> dict[str, ParamKind]:
    """name -> its row; ValueError listing every tensor that matches no row or several."""
    out: dict[str, ParamKind] = {}
    problems = []
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name}: not a tensor ({type(t).__name__})")
            continue
        hits = [k for k in kinds if k.matches(name, t)]
        if len(hits) == 1:
            out[name] = hits[0]
        else:
            problems.append(f"{_describe(name, t)}: rows matched: "
                            f"{', '.join(k.kind for k in hits) if hits else 'none'}")
    if problems:
        raise ValueError("every tensor must match exactly one row of model/params.py PARAM_KINDS "
                         "(add a row for a new tensor); " + "; ".join(problems))
    return out


def kind_of(name: str, tensor: torch.Tensor,
            kinds: tuple[ParamKind, ...] = PARAM_KINDS) -> ParamKind:
    """The one row of `kinds` that `name`/`tensor` matches; ValueError naming it otherwise."""
    return kinds_of([(name, tensor)], kinds)[name]
