"""Typed run configuration: nested dataclasses, validation, dotted overrides, JSON round trip.

Every knob of a run lives here, so a run is fully described by one JSON document (saved in each
run directory and inside each artifact). Presets (presets.py) are functions returning a RunConfig;
users change them with `--set section.field=value`, never with environment variables.
Standard library only: this module ships inside artifacts and exported scripts.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from loopgolf.config_fields import ConfigError, at_least as _at_least, finite as _finite
from loopgolf.config_fields import fractions as _fractions, from_dict as _from_dict, set_dotted

__all__ = ["BUDGET_BYTES", "ConfigError", "DataConfig", "EVAL_METHODS", "EvalConfig", "ModelConfig",
           "OptimConfig", "QuantConfig", "RunConfig", "TrainConfig", "set_dotted"]

BUDGET_BYTES = 16_000_000  # the challenge's decimal artifact cap: code bytes + compressed weights


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    dim: int = 512
    n_heads: int = 8
    n_kv_heads: int = 4
    mlp: str = "relu2"  # relu2 | leaky_relu2 | swiglu
    mlp_hidden: int = 1024  # hidden width of the MLP (SwiGLU: width of each of gate/up)
    # Recurrence plan spec, parsed by model/recurrence.py: "9" (flat), "1x12" (1 block x 12 loops),
    # "3x4", "4c7" (4 blocks cycled over 7 layers), "11:4-5x2" (11 layers, 4..5 run twice), "0,1,0,1".
    plan: str = "9"
    # Earlier plans used before the final one, "spec@until;...": "11@0.35" runs flat until 35% of the
    # budget, "3x2@0.3;3x3@0.5" ramps depth 2 -> 3 -> final (PR #1453); "@s3000" means a step count.
    plan_stages: str = ""
    unet_skips: bool = True  # U-Net skips over the virtual layer sequence (baseline L670-713)
    skip_gated: bool = False  # sigmoid-gated skips: x = lerp(w*skip, x, sigmoid(g)) (record (a) L416)
    per_layer_scales: bool = False  # attn/mlp scale and resid_mix per virtual layer (PR #927)
    loop_embed: bool = False  # a learned vector added before each virtual layer (PR #1453)
    cross_repeat: bool = False  # add a block's previous-repeat output, learned scale (PR #1453)
    value_embeds: int = 0  # residual-form value embeddings: full-width tables (PR #1453)
    ve_dim: int = 0  # V-injection value embedding width; 0 = off (record (a) VE128)
    ve_layers: str = ""  # virtual layers that get V-injection, e.g. "-2,-1" (the last two)
    xsa_last: int = 0  # XSA on the last n virtual layers of the running plan; -1 = all
    smear_gate: bool = False  # per-dim gate mixing x_{t-1} into x_t, masked at BOS
    bigram_buckets: int = 0  # BigramHash table rows; 0 = off (record (a) L308-317)
    bigram_dim: int = 128
    rope_dims: int = 0  # rotary dims per head; 0 = all (records: 16)
    ln_scale: bool = False  # scale normalized block inputs by 1/sqrt(block+1) (record (c) L445)
    parallel_from: int = -1  # physical blocks >= this use a parallel residual (record (d)); -1 = off
    untie_repeat_mlp: bool = False  # repeated visits of a block use their own MLP (record (a))
    lora_rank: int = 0  # per-virtual-layer LoRA on attention q/k/v/o of shared blocks; 0 = off
    mtp_heads: int = 0  # training-only heads predicting tokens t+2..t+1+n; never shipped
    mtp_weight: float = 0.3  # weight of the mean auxiliary loss
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    logit_softcap: float = 30.0
    tie_embeddings: bool = True
    embed_init_std: float = 0.005

    def validate(self) -> None:
        _finite("model", self)
        # sizes first, so that e.g. model.dim=-5 says what is wrong rather than "not divisible"
        _at_least("model", self, 1, "dim", "n_heads", "n_kv_heads", "mlp_hidden", "bigram_dim")
        _at_least("model", self, 0, "value_embeds", "ve_dim", "bigram_buckets", "rope_dims",
                  "lora_rank", "mtp_heads", "mtp_weight", "qk_gain_init", "logit_softcap",
                  "embed_init_std", hint=" (0 = off)")
        _at_least("model", self, -1, "xsa_last", "parallel_from", hint=" (-1 = all / off)")
        if not self.rope_base > 0:
            raise ConfigError(f"model.rope_base={self.rope_base} must be > 0 (10000 is usual)")
        if not self.plan.strip():
            raise ConfigError("model.plan is empty; e.g. model.plan=9 or model.plan=3x4")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ConfigError(f"head dim {self.dim // self.n_heads} must be even for RoPE")
        if self.mlp not in ("relu2", "leaky_relu2", "swiglu"):
            raise ConfigError(f"model.mlp={self.mlp!r}: choose relu2, leaky_relu2 or swiglu")
        if not 2 <= self.vocab_size <= 65536:
            raise ConfigError(f"model.vocab_size={self.vocab_size}: shards store uint16, so 2..65536")
        hd = self.dim // self.n_heads
        if self.rope_dims and (self.rope_dims % 2 or not 0 < self.rope_dims <= hd):
            raise ConfigError(f"model.rope_dims={self.rope_dims} must be even and in 2..{hd}")
        if self.ve_dim and not self.ve_layers:
            raise ConfigError("model.ve_dim is set but model.ve_layers is empty; e.g. model.ve_layers=-2,-1")
        if self.bigram_buckets and self.bigram_buckets < 2:
            raise ConfigError("model.bigram_buckets must be >= 2 (or 0 to disable)")


@dataclass
class DataConfig:
    train: str = ""  # glob of training shards (*.bin)
    val: str = ""  # glob of validation shards
    tokenizer: str = ""  # SentencePiece .model used for the byte tables
    seq_len: int = 1024

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.seq_len} must be >= 2")



@dataclass
class OptimConfig:
    matrix_lr: float = 0.04  # Muon, 2-D block matrices
    scalar_lr: float = 0.04  # Adam, control tensors and skip weights
    tied_embed_lr: float = 0.05  # Adam, tied embedding
    embed_lr: float = 0.6  # Adam, untied input embedding
    head_lr: float = 0.008  # Adam, untied output head
    momentum: float = 0.95
    momentum_warmup_start: float = 0.85
    momentum_warmup_frac: float = 0.0  # fraction of the budget over which momentum ramps up
    momentum_warmup_steps: int = 0  # baseline-compatible alternative, in steps (baseline: 500)
    ns_steps: int = 5
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # Muon, decoupled: p *= 1 - lr * wd
    adam_weight_decay: float = 0.0  # AdamW, scalars and head
    embed_weight_decay: float = 0.0  # AdamW, embedding tables
    muon_row_norm: bool = False  # MuonEq-R (record (b) L347)
    ns_coeffs: str = "standard"  # standard | polar (Polar Express, top record L1716-1748)
    min_lr_frac: float = 0.0  # LR floor during warm-down, as a fraction of the base LR (top record)
    ema_horizon_frac: float = 0.0  # EMA time constant as a fraction of the run's steps; 0 = off
    swa_start_frac: float = 0.0  # average snapshots from this fraction of the run on; 0 = off
    swa_every_frac: float = 0.01  # snapshot spacing, fraction of the run
    warmup_frac: float = 0.0  # linear LR warm-up, fraction of the budget
    warmdown_frac: float = 0.0  # linear LR warm-down to 0 over the last fraction of the budget
    # Baseline-compatible warm-down measured in wall clock: warmdown_iters x average step time
    # (baseline L924-933). 0 = off; when both are set the smaller multiplier wins.
    warmdown_iters: int = 0
    grad_clip: float = 0.0

    def validate(self) -> None:
        _finite("optim", self)
        _at_least("optim", self, 0, "matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr",
                  "weight_decay", "adam_weight_decay", "embed_weight_decay", "grad_clip",
                  "momentum_warmup_steps", "warmdown_iters")
        for name in ("momentum", "momentum_warmup_start", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        if not self.adam_eps > 0:
            raise ConfigError(f"optim.adam_eps={self.adam_eps} must be > 0 (e.g. 1e-8)")
        _fractions("optim", self, "momentum_warmup_frac", "warmup_frac", "warmdown_frac")
        if self.warmup_frac + self.warmdown_frac > 1.0:
            raise ConfigError("optim.warmup_frac + optim.warmdown_frac must be <= 1")
        if self.ns_steps < 1:
            raise ConfigError("optim.ns_steps must be >= 1")
        if self.ns_coeffs not in ("standard", "polar"):
            raise ConfigError(f"optim.ns_coeffs={self.ns_coeffs!r}: choose standard or polar")
        if self.ema_horizon_frac and self.swa_start_frac:
            raise ConfigError("optim.ema_horizon_frac and optim.swa_start_frac are exclusive; pick one")
        _fractions("optim", self, "min_lr_frac", "ema_horizon_frac", "swa_start_frac", "swa_every_frac")


@dataclass
class TrainConfig:
    batch_tokens: int = 524_288  # global tokens per optimizer step, fixed for any world size
    micro_batch_seqs: int = 64  # sequences per forward/backward on one rank
    # Wall-clock training budget (compile warm-up excluded). 0 = explicitly no budget: the run is
    # bounded by max_steps alone (the tiny test preset); negative, nan and inf are refused.
    budget_s: float = 600.0
    max_steps: int = 20_000
    val_every: int = 0  # steps between periodic validations; 0 = only at the end
    val_tokens: int = 0  # tokens of val used by periodic validation; 0 = all
    log_every: int = 50
    compile: bool = True  # torch.compile on CUDA (ignored on CPU)
    # Inductor's mix-order reduction (default on since torch 2.10) drops gradient writes for slices
    # of one shared parameter (pytorch#193061, fixed by #193103): loop_embed[v], ve_scales[v, k],
    # cross_repeat_scales[b, r]. It made seed-shared-3x4 diverge under compile only; off by default.
    compile_mix_order_reduction: bool = False
    warmup_steps: int = 20  # compile-priming steps; weights and optimizer are restored afterwards
    seed: int = 1337
    checkpoint_every: int = 0  # steps between checkpoints; 0 = by checkpoint_auto
    # with checkpoint_every=0: checkpoint every 10% of the run when budget_s > 180 (train/triggers.py)
    checkpoint_auto: bool = True
    stall_frac: float = 0.25  # stop when the loss stays at ln(vocab) this share of the run; 0 = off
    device: str = "auto"  # auto | cpu | cuda

    def validate(self, seq_len: int) -> None:
        _finite("train", self)
        if not self.budget_s >= 0:
            raise ConfigError(f"train.budget_s={self.budget_s} must be > 0 seconds "
                              "(or 0 for no time budget, when train.max_steps bounds the run)")
        if self.batch_tokens < 1:
            raise ConfigError(f"train.batch_tokens={self.batch_tokens} must be > 0: tokens per "
                              f"optimizer step, a multiple of data.seq_len={seq_len}")
        _at_least("train", self, 0, "val_every", "val_tokens", "warmup_steps", "checkpoint_every",
                  hint=" (0 = off)")
        _at_least("train", self, 1, "log_every")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"train.seed={self.seed} must be in 0..2**32-1")
        if self.batch_tokens % seq_len:
            raise ConfigError(f"train.batch_tokens={self.batch_tokens} is not a multiple of "
                              f"data.seq_len={seq_len}; e.g. {max(1, round(self.batch_tokens / seq_len)) * seq_len}")
        if self.micro_batch_seqs < 1:
            raise ConfigError("train.micro_batch_seqs must be >= 1")
        if self.max_steps < 1:
            raise ConfigError("train.max_steps must be >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError(f"train.checkpoint_every={self.checkpoint_every}: use N > 0 steps, or 0 "
                              "(every 10% of runs over 3 minutes; train.checkpoint_auto=false: none)")
        if not 0.0 <= self.stall_frac <= 1.0:
            raise ConfigError(f"train.stall_frac={self.stall_frac} must be a fraction in [0, 1] (0 = off)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device={self.device!r}: choose auto, cpu or cuda")


@dataclass
class QuantConfig:
    scheme: str = "int8_row"  # per-row int8 with fp16 scales (baseline L321-334)
    codec: str = "zlib"  # zlib | zstd | lzma | brotli
    level: int = -1  # codec level; -1 = the codec's strongest (zlib 9, zstd 22, lzma 9, brotli 11)
    clip_percentile: float = 99.99984  # per-row clip quantile of |w| (baseline L321)
    passthrough_max_numel: int = 65_536  # float tensors this small are stored as fp16/fp32
    # Floor of per-row scales: the baseline clamps them to >= 1/127 (baseline L321-334); 0 = only
    # guard against a zero scale (fp16's smallest normal is used instead).
    row_scale_min: float = 1.0 / 127.0
    # Per-row clip of intN: "percentile" (clip_percentile), "search" (per row, the lowest-MSE clip
    # among candidate percentiles; record (a)) or "sdclip" (clip = sdclip_k * std(row); PR #1394).
    clip: str = "percentile"
    # quant.clip=search candidates, comma-separated percentiles; "" = compress/quant.py's default set
    search_percentiles: str = ""
    sdclip_k: float = 12.85  # PR #1394: 12.85 for int6 matrices, 20 for the int8 embedding
    # Per-pattern scheme of the large matrices, "mlp=5,attn=6,tok_emb=8" (a number N = intN_row, or
    # a scheme name such as ternary_row); when set, every matrix must match exactly one pattern.
    bits_rules: str = ""
    shuffle: bool = False  # byte-shuffle multi-byte parts before compression (records (a)-(d))
    prune_frac: float = 0.0  # fraction of quantized +-1 values zeroed, smallest |w| first
    # Budget fitting after training: 0 = off; else the artifact + code bytes to land just under
    # (e.g. 15_990_000). quant.sdclip_k (clip=sdclip), quant.prune_frac, then the widths are searched
    # (compress/fit.py, or compress/fit_gptq.py with quant.gptq); the artifact records the values used.
    fit_target: int = 0
    gptq: bool = False  # full-Hessian GPTQ of the matrices (compress/gptq.py)
    gptq_damp: float = 0.01  # fraction of mean(diag H) added to the diagonal
    gptq_block: int = 128
    gptq_act_order: bool = True
    gptq_calib: str = "train"  # train (batches inside the training budget) | self (sampled)
    gptq_calib_batches: int = 64  # calibration batches (train) or sequences (self)
    gptq_calib_temp: float = 0.8  # sampling temperature of self-generated calibration
    gptq_reserve_s: float = 10.0  # seconds of the training budget kept for train calibration
    lqer_rank: int = 0  # LQER: rank of the fp16 low-rank correction of each matrix's error; 0 = off
    qat: str = "off"  # off | ste (fake-quant, straight-through) | noise (uniform noise at the step)
    qat_start_frac: float = 0.0  # fraction of the budget after which QAT switches on

    def validate(self) -> None:
        _finite("quant", self)
        _at_least("quant", self, -1, "level", hint=" (-1 = the codec's strongest)")
        _at_least("quant", self, 0, "passthrough_max_numel", "gptq_reserve_s")
        _at_least("quant", self, 1, "gptq_calib_batches")
        if not self.gptq_calib_temp > 0:
            raise ConfigError(f"quant.gptq_calib_temp={self.gptq_calib_temp} must be > 0")
        if self.row_scale_min < 0.0:
            raise ConfigError(f"quant.row_scale_min={self.row_scale_min} must be >= 0")
        if self.codec not in ("zlib", "zstd", "lzma", "brotli", "best"):
            raise ConfigError(f"quant.codec={self.codec!r}: choose zlib, zstd, lzma, brotli or best")
        if self.codec == "best" and self.level != -1:
            raise ConfigError("quant.codec=best compares every codec at its strongest level; "
                              "leave quant.level=-1")
        if not 50.0 < self.clip_percentile <= 100.0:
            raise ConfigError(f"quant.clip_percentile={self.clip_percentile} must be in (50, 100]")
        if self.clip not in ("percentile", "search", "sdclip"):
            raise ConfigError(f"quant.clip={self.clip!r}: choose percentile, search or sdclip")
        try:
            pcts = [float(x) for x in self.search_percentiles.split(",")] if self.search_percentiles.strip() else []
        except ValueError:
            pcts = [float("nan")]
        if not all(50.0 < x <= 100.0 for x in pcts):
            raise ConfigError(f"quant.search_percentiles={self.search_percentiles!r}: give percentiles in "
                              "(50, 100] separated by commas, e.g. 99.99,99.999,100 (\"\" = the default set)")
        if not self.sdclip_k > 0.0:
            raise ConfigError(f"quant.sdclip_k={self.sdclip_k} must be > 0")
        if not 0.0 <= self.prune_frac <= 1.0:
            raise ConfigError(f"quant.prune_frac={self.prune_frac} must be a fraction in [0, 1]")
        if not 0 <= self.fit_target <= BUDGET_BYTES:
            raise ConfigError(f"quant.fit_target={self.fit_target} must be 0 (off) or a byte count "
                              f"in 1..{BUDGET_BYTES:,}, e.g. 15990000")
        if not 0.0 <= self.gptq_damp < 1.0 or self.gptq_block < 1:
            raise ConfigError("quant.gptq_damp must be in [0, 1) and quant.gptq_block >= 1")
        if self.gptq_calib not in ("train", "self"):
            raise ConfigError(f"quant.gptq_calib={self.gptq_calib!r}: choose train or self")
        if not 0 <= self.lqer_rank <= 256:
            raise ConfigError(f"quant.lqer_rank={self.lqer_rank} must be in 0..256 (0 = off)")
        if self.qat not in ("off", "ste", "noise"):
            raise ConfigError(f"quant.qat={self.qat!r}: choose off, ste or noise")
        if not 0.0 <= self.qat_start_frac <= 1.0:
            raise ConfigError(f"quant.qat_start_frac={self.qat_start_frac} must be in [0, 1]")


EVAL_METHODS = ("plain", "sliding", "ttt_sgd", "ttt_lora", "mixture")  # eval/recipe.EVALUATORS


@dataclass
class EvalConfig:
    """The scoring recipe: which evaluator (eval/recipe.EVALUATORS) and every setting it reads.

    It is part of the run config, so config.json and each artifact carry the recipe that scored it.
    Prefixes name the method a field belongs to (sgd_ = ttt_sgd, lora_ = ttt_lora, mix_ = mixture).
    """

    method: str = "plain"  # plain | sliding | ttt_sgd | ttt_lora | mixture
    context: int = 0  # window length in tokens; 0 = data.seq_len
    stride: int = 64  # window stride of sliding, ttt_sgd and mixture (plain: stride = context)
    batch_tokens: int = 524_288  # tokens per eval batch across all ranks
    max_tokens: int = 0  # 0 = the whole validation set; >0 truncates (demos and smoke tests)
    # ttt_sgd: score-first full-parameter SGD (PR #1493)
    sgd_lr: float = 0.005
    sgd_momentum: float = 0.9
    sgd_epochs: int = 3
    sgd_chunk_tokens: int = 32_768  # targets scored before each round of updates
    sgd_seq_len: int = 0  # training sequence length; 0 = context
    sgd_batch_seqs: int = 32  # sequences of the global stream per update, split over ranks
    sgd_grad_clip: float = 1.0  # 0 = off
    sgd_freeze_blocks: int = 0  # physical blocks 0..N-1 stay fixed during ttt_sgd (PR #927: 1)
    # sequences per forward/backward of ttt_sgd and of ttt_lora's phases; fixed by the data, not
    # the world size, so gradients sum the same way on any number of ranks
    sgd_micro_seqs: int = 4
    # ttt_lora: score-first per-document LoRA (PR #1855)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 1e-4
    lora_beta2: float = 0.99
    lora_weight_decay: float = 0.5
    lora_chunk: int = 48  # targets per document chunk
    lora_docs_per_batch: int = 64  # consecutive documents adapted together (one adapter each)
    lora_phases: int = 0  # global SGD phases on the base weights over documents already scored
    lora_phase_lr: float = 0.001
    lora_phase_seq_len: int = 0  # 0 = context
    lora_phase_batch_seqs: int = 32  # sequences of the global stream per phase step
    lora_warm_start_a: bool = False  # keep A across batches (one process only)
    # mixture: normalized online mixture of the network with n-gram experts
    mix_eta: float = 1.0  # Hedge learning rate; 1 = Bayesian model averaging
    mix_network_prior: float = 0.97  # prior weight of the network; the rest is split evenly
    mix_trigram_buckets: int = 4096

    def validate(self, seq_len: int = 0) -> None:
        """seq_len = data.seq_len (the context when eval.context = 0); 0 skips the stride check."""
        if self.method not in EVAL_METHODS:
            raise ConfigError(f"eval.method={self.method!r}: choose one of {', '.join(EVAL_METHODS)}")
        if self.context < 0:
            raise ConfigError(f"eval.context={self.context} must be >= 0 (0 = data.seq_len)")
        ctx = self.context or seq_len
        if ctx and not 1 <= self.stride <= ctx and self.method in ("sliding", "ttt_sgd", "mixture"):
            raise ConfigError(f"eval.stride={self.stride} must be in 1..{ctx} (the eval context)")
        if self.batch_tokens < 1:
            raise ConfigError(f"eval.batch_tokens={self.batch_tokens} must be >= 1")
        if self.max_tokens < 0:
            raise ConfigError(f"eval.max_tokens={self.max_tokens} must be 0 (the whole validation set) "
                              "or a positive token count")
        positive = ("sgd_epochs", "sgd_chunk_tokens", "sgd_batch_seqs", "sgd_micro_seqs", "lora_rank",
                    "lora_chunk", "lora_docs_per_batch", "lora_phase_batch_seqs", "mix_trigram_buckets")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 1")
        for name in ("sgd_lr", "sgd_grad_clip", "sgd_seq_len", "sgd_freeze_blocks", "lora_lr", "lora_weight_decay",
                     "lora_phases", "lora_phase_lr", "lora_phase_seq_len", "mix_eta"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 0")
        for name in ("sgd_momentum", "lora_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be in [0, 1)")
        if not 0.0 < self.mix_network_prior < 1.0:
            raise ConfigError(f"eval.mix_network_prior={self.mix_network_prior} must be in (0, 1)")


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.data.validate()
        self.optim.validate()
        self.train.validate(self.data.seq_len)
        self.quant.validate()
        self.eval.validate(self.data.seq_len)
        if 0 < self.eval.max_tokens < self.data.seq_len:
            raise ConfigError(f"eval.max_tokens={self.eval.max_tokens} must be 0 (the whole validation set) "
                              f"or >= data.seq_len={self.data.seq_len} (one window)")
        return self

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return _from_dict(cls, d, "")

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def override(self, assignments: list[str]) -> "RunConfig":
        """Apply `section.field=value` strings; values are parsed as the field's type."""
        for a in assignments:
            if "=" not in a:
                raise ConfigError(f"--set {a!r}: expected section.field=value")
            key, raw = a.split("=", 1)
            set_dotted(self, key.strip(), raw.strip())
        return self
