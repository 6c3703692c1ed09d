"""Published variants of the model's tricks (`model.*` fields: inits, hash and wiring choices, the
block form) and of the optimizer (`optim.*`: PR #29's AdamW and cosine, PR #1290's Adam projections).

The same trick appears in the seed PRs with small differences (BigramHash's hash, SmearGate's
place, value-embedding inits, how many U-Net pairs a looped plan keeps). A seed preset reproduces
its PR by setting these; every default keeps the behaviour loopgolf had before the field existed
(record (a)'s forms), so other presets are unchanged. ModelConfig (config.py) inherits these
fields, so they are ordinary `model.*` fields in JSON and `--set`; split from config.py so each
config module stays small. Standard library only: it ships inside artifacts with config.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from loopgolf.config_fields import ConfigError

BIGRAM_HASHES = ("xor", "mul")  # model/features.py BigramHash.bucket


@dataclass
class TrickVariants:
    # baseline (resid_mix, QK-norm, q_gain, scales) | plain_prenorm (PR #29: x += attn(norm_w(x)); x += mlp(norm_w(x)))
    block: str = "baseline"
    init_std: float = 0.0  # > 0: PR #29's N(0, std) block init, output projections std/sqrt(2L); 0 = baseline's
    fp32_stream: bool = False  # float32 residual stream under autocast, as PR #29's fp32 model (GPT._hidden)
    fold_scales: bool = False  # attn/mlp scales multiplied into the output projections' weights (blocks.py scaled_linear)
    # QK-norm, RoPE and q gain in (B, T, H, D), attention fed transposed views (blocks.py Attention.heads_bthd)
    attn_bthd: bool = False
    # GQA's k, v copied out to every query head before dense attention (blocks.py expanded_kv_attend;
    # document-isolated attention keeps its own kernel)
    attn_expand_kv: bool = False
    recurrence_scales: bool = False  # x *= s[v] before each virtual layer v (PR #21 L759)
    # residual value embeddings (model.value_embeds): table init std; 0 = model.embed_init_std
    # (PR #1453 keeps nn.Embedding's N(0, 1), L913)
    value_embeds_std: float = 0.0
    # BigramHash (model.bigram_buckets): xor = record (a) (36313 t XOR 27191 t_prev) mod (B-1), BOS
    # row B-1 at position 0; mul = PR #927 (92821 t_prev + t) mod B, t_prev = 0 at position 0
    bigram_hash: str = "xor"
    bigram_scale: float = 0.05  # init of the learned bigram.scale; 0 = no scale parameter (PR #927)
    bigram_table_std: float = 0.02  # PR #927: 0.01; PR #1290: 0 (zeros, its proj orthogonal)
    bigram_proj_gain: float = 0.0  # 0 = zero init; g > 0 = orthogonal with gain g (PR #1290: 1)
    # SmearGate (model.smear_gate): gate init, and the PR #927 / #1290 form: after the embedding's
    # rms_norm and without the BOS mask (default: before it, masked at BOS, record (e)'s fix)
    smear_init: float = -3.0  # PR #927 / #1290: 0 (sigmoid = 1/2)
    smear_after_norm: bool = False
    # V-injection (model.ve_dim): table std, per-layer scale init, an optional global scale
    # ve_inject.scale (PR #1290: 0.1, L737), projection init (0 = nn.Linear's default; g > 0 =
    # orthogonal with gain g: PR #927 1/sqrt(2 x 7 virtual layers), PR #1290 1)
    ve_table_std: float = 0.02  # PR #927 / #1290: 0.01
    ve_scale_init: float = 0.0  # PR #927 / #1290: 1
    ve_global_scale: float = 0.0  # 0 = no global scale parameter
    ve_proj_gain: float = 0.0
    # U-Net (model.unet_skips): at most this many decoder layers pop a skip; 0 = the plan's own
    # min(encoder, decoder). PR #1290 keeps its 11 physical layers' 5 when the loop makes 13 (L964-970)
    unet_max_pairs: int = 0

    def validate_variants(self) -> None:
        if self.block not in ("baseline", "plain_prenorm") or self.block == "plain_prenorm" and (
                self.per_layer_scales or self.ln_scale or max(self.parallel_from, self.lanes_from) >= 0):
            raise ConfigError(f"model.block={self.block!r}: choose baseline or plain_prenorm (which has one residual "
                              "form: no model.per_layer_scales, ln_scale, parallel_from or lanes_from)")
        if self.bigram_hash not in BIGRAM_HASHES:
            raise ConfigError(f"model.bigram_hash={self.bigram_hash!r}: choose xor (record (a)) or mul (PR #927)")
        for name in ("value_embeds_std", "bigram_scale", "bigram_table_std", "bigram_proj_gain",
                     "ve_table_std", "ve_global_scale", "ve_proj_gain", "unet_max_pairs"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 0 (0 = the default form)")


@dataclass
class OptimVariants:
    """The seeds' optimizer forms: PR #29's single AdamW with a step-keyed cosine, PR #1290's feature
    projections in AdamW. OptimConfig (config.py) inherits these as ordinary `optim.*` fields."""
    kind: str = "muon"  # muon (the params table: Muon + AdamW) | adamw (one AdamW over every parameter, PR #29)
    adamw_lr: float = 3e-3  # optim.kind=adamw: the base LR of every parameter (weight decay: adam_weight_decay)
    # linear (warmup_frac / warmdown_* / min_lr_frac) | cosine: to min_lr_frac after the warm-up (PR #29 L304-315)
    lr_schedule: str = "linear"
    lr_warmup_steps: int = 0  # step-keyed warm-up, LR x (step+1)/N (PR #29: 100); 0 = warmup_frac
    lr_cosine_steps: int = 0  # step-keyed cosine horizon, not clamped past it (PR #29: 285); 0 = the run's end
    feature_proj_adam: bool = False  # bigram.proj, ve_inject.proj in AdamW at scalar_lr (PR #1290 L1882)

    def validate_optim_variants(self) -> None:
        if self.kind not in ("muon", "adamw") or self.lr_schedule not in ("linear", "cosine"):
            raise ConfigError(f"optim.kind={self.kind!r} / optim.lr_schedule={self.lr_schedule!r}: choose "
                              "kind muon or adamw, lr_schedule linear or cosine")
        if self.lr_schedule == "cosine" and (self.warmdown_frac or self.warmdown_iters or 0 < self.lr_cosine_steps
                                             <= self.lr_warmup_steps):
            raise ConfigError("optim.lr_schedule=cosine decays on its own to optim.min_lr_frac: set optim.warmdown_frac"
                              "=0, optim.warmdown_iters=0, optim.lr_cosine_steps > lr_warmup_steps (or 0)")


@dataclass
class QuantVariants:
    """Published forms of the exporter. QuantConfig (config.py) inherits these as `quant.*` fields."""
    # per-row intN scales floored at 1/qmax of each tensor's own grid (1/31 at int6, 1/127 at int8), as
    # the challenge quantizer's clamp_min(1/max_val) does at every width (PR #927 L318); the export only:
    # QAT keeps its grid without it, as PR #927's absmax QAT (L486-492). quant.row_scale_min still applies.
    row_scale_min_qmax: bool = False

