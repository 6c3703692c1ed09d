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

from loopgolf.config_fields import (ConfigError, at_least as _at_least, finite as _finite, fractions as _fractions,
                                    from_dict as _from_dict, set_dotted)
from loopgolf.config_eval import EVAL_METHODS, EvalConfig
from loopgolf.config_variants import OptimVariants, QuantVariants, TrickVariants

__all__ = ["BUDGET_BYTES", "ConfigError", "DataConfig", "EVAL_METHODS", "EvalConfig", "ModelConfig",
           "OptimConfig", "QuantConfig", "RunConfig", "TrainConfig", "set_dotted"]

BUDGET_BYTES = 16_000_000  # the challenge's decimal artifact cap: code bytes + compressed weights


@dataclass
class ModelConfig(TrickVariants):  # + the tricks' published variants (config_variants.py)
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
    # frontier (PR #1855 lineage; model/doc_attention.py, attention_tricks.py, features.py, layer_tricks.py)
    doc_isolated_attn: bool = False  # attention never crosses a BOS document boundary (PR #1530 varlen)
    attn_gate_window: int = 0  # sparse attention output gate reading x[:window] (#1787/#1855: 12); 0 = off
    attn_gate_scale: float = 1.0  # its logit scale (#1855 ran 0.5)
    smear_window: int = 0  # input-dependent BOS-masked SmearGate reading x[:window] (#1855: 12); 0 = off
    lanes_from: int = -1  # two-lane parallel residual on the final blocks >= this (#1855: 8); -1 = off
    lora_rank: int = 0  # LoRA on attention q/k/v/o, one set per extra loop shared by the blocks (PR #21); 0 = off
    mtp_heads: int = 0  # training-only heads predicting tokens t+2..t+1+n; never shipped
    mtp_weight: float = 0.3  # weight of the mean auxiliary loss
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    logit_softcap: float = 30.0
    asym_logit: bool = False  # learned caps for positive / negative logits (PR #1923 AsymLogit)
    fused_ce: bool = False  # chunked softcapped CE: no B*T*V logits in memory (model/fused_ce.py)
    fused_qkv: bool = False  # one stacked q/k/v product (blocks.py project_qkv; measured slower there)
    fp8: bool = False  # training matmuls of block linears in float8 e4m3, row-wise scales (model/fp8.py)
    tie_embeddings: bool = True
    embed_init_std: float = 0.005
    ortho_init: bool = False  # orthogonal init of every block's c_q/c_k/c_v/fc (#1855 L1254-1278)

    def validate(self) -> None:
        _finite("model", self)
        self.validate_variants()
        # sizes first, so that e.g. model.dim=-5 says what is wrong rather than "not divisible"
        _at_least("model", self, 1, "dim", "n_heads", "n_kv_heads", "mlp_hidden", "bigram_dim")
        _at_least("model", self, 0, "value_embeds", "ve_dim", "bigram_buckets", "rope_dims", "init_std",
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
        _at_least("model", self, -1, "lanes_from", hint=" (-1 = off)")
        for name in ("attn_gate_window", "smear_window"):
            if not 0 <= getattr(self, name) <= self.dim:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be in 0..model.dim={self.dim} "
                                  "(the gate reads the first `window` dims; 0 = off; #1855 uses 12)")
        if self.smear_window and self.smear_gate:
            raise ConfigError("model.smear_gate (static) and model.smear_window (input-dependent) are two "
                              "SmearGates; turn one off")
        if self.lanes_from >= 0 and self.parallel_from >= 0:
            raise ConfigError("model.lanes_from (two-lane) and model.parallel_from (one-lane) both replace "
                              "the residual; set one of them to -1")
        if self.asym_logit and not self.logit_softcap > 0:
            raise ConfigError("model.asym_logit starts both caps at model.logit_softcap, which is 0 "
                              "(no cap); set model.logit_softcap=30 or model.asym_logit=false")


@dataclass
class DataConfig:
    train: str = ""  # glob of training shards (*.bin)
    val: str = ""  # glob of validation shards
    tokenizer: str = ""  # SentencePiece .model used for the byte tables
    seq_len: int = 1024
    # sequential = contiguous chunks in shard order (the baseline); random_windows = rows at uniform
    # random starts, drawn with replacement per step (PR #29 L288-295; data/loader.py RandomWindows)
    sampling: str = "sequential"

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.seq_len} must be >= 2")
        if self.sampling not in ("sequential", "random_windows"):
            raise ConfigError(f"data.sampling={self.sampling!r}: choose sequential or random_windows")


@dataclass
class OptimConfig(OptimVariants):  # + the seeds' optimizer variants (config_variants.py)
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
    asym_logit_lr: float = 0.0  # Adam, model.asym_logit's caps; 0 = frozen in training (PR #1923)
    # Baseline-compatible warm-down measured in wall clock: warmdown_iters x average step time
    # (baseline L924-933). 0 = off; when both are set the smaller multiplier wins.
    warmdown_iters: int = 0
    grad_clip: float = 0.0

    def validate(self) -> None:
        _finite("optim", self)
        _at_least("optim", self, 0, "matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr",
                  "asym_logit_lr", "weight_decay", "adam_weight_decay", "embed_weight_decay", "grad_clip",
                  "momentum_warmup_steps", "warmdown_iters", "adamw_lr", "lr_warmup_steps", "lr_cosine_steps")
        self.validate_optim_variants()
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


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient")


@dataclass
class TrainConfig:
    batch_tokens: int = 524_288  # global tokens per optimizer step, fixed for any world size
    micro_batch_seqs: int = 64  # sequences per forward/backward on one rank
    # wall-clock training budget (compile warm-up excluded); 0 = none, max_steps bounds the run (tiny)
    budget_s: float = 600.0
    max_steps: int = 20_000
    val_every: int = 0  # steps between periodic validations; 0 = only at the end
    val_tokens: int = 0  # tokens of val used by periodic validation; 0 = all
    log_every: int = 50
    compile: bool = True  # torch.compile on CUDA (ignored on CPU)
    # inductor's mix-order reduction drops gradient writes to slices of a shared parameter (pytorch#193061)
    compile_mix_order_reduction: bool = False
    compile_check: bool = True  # compiled vs eager gradients once per graph, before the clock (train/compile_verify.py)
    # compile-priming steps per graph (plan stage x QAT state), undone afterwards: 3 = the first compile,
    # the optimizer's first step (state created), one steady step; a recompile in the loop is logged
    warmup_steps: int = 3
    compile_mode: str = "default"  # torch.compile mode: default | max-autotune-no-cudagraphs | max-autotune
    # persistent inductor / AOTAutograd / Triton caches ("" = torch's /tmp default, often wiped)
    compile_cache_dir: str = "~/.cache/loopgolf/compile"
    # inductor's coordinate-descent tuning of Triton launch configs (modded-nanogpt): slow first compile
    compile_tuning: bool = False
    sdpa_backend: str = "auto"  # auto (torch's priority order) | flash | cudnn | efficient, on CUDA
    seed: int = 1337
    checkpoint_every: int = 0  # steps between checkpoints; 0 = by checkpoint_auto
    # with checkpoint_every=0: checkpoint every 10% of the run when budget_s > 180 (train/triggers.py)
    checkpoint_auto: bool = True
    stall_frac: float = 0.25  # stop when the loss stays at ln(vocab) this share of the run; 0 = off
    device: str = "auto"  # auto | cpu | cuda
    # gradient sum across ranks: ddp = DistributedDataParallel (bucketed, overlapped with the last
    # micro-batch's backward, no_sync before it); allreduce = one bucketed all-reduce after backward
    grad_sync: str = "ddp"
    seq_len_schedule: str = ""  # rows grow, tokens/step fixed: "1024@0.1,2048@0.7" (PR #2014; train/schedule.py)

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
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ConfigError(f"train.sdpa_backend={self.sdpa_backend!r}: choose one of {', '.join(SDPA_BACKENDS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"train.compile_mode={self.compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")
        if self.grad_sync not in ("ddp", "allreduce"):
            raise ConfigError(f"train.grad_sync={self.grad_sync!r}: choose ddp or allreduce")


@dataclass
class QuantConfig(QuantVariants):  # + the published exporter forms (config_variants.py)
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
    search_percentiles: str = ""  # quant.clip=search candidates, comma-separated; "" = quant.py's default set
    sdclip_k: float = 12.85  # PR #1394: 12.85 for int6 matrices, 20 for the int8 embedding
    sdclip_k_embed: float = 0.0  # SDClip k of PARAM_KINDS "embedding" tensors; 0 = sdclip_k (#1493: 20)
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
    gptq_embed: bool = False  # GPTQ on the tied embedding too, Hessian of the head's input (#1493)
    gptq_calib: str = "train"  # train (batches inside the training budget) | self (sampled)
    gptq_calib_batches: int = 64  # calibration batches (train) or sequences (self)
    gptq_calib_temp: float = 0.8  # sampling temperature of self-generated calibration
    gptq_reserve_s: float = 10.0  # seconds of the training budget kept for train calibration
    lqer_rank: int = 0  # LQER: rank of the low-rank correction of each matrix's error; 0 = off
    lqer_asym_group: int = 0  # 0 = fp16 factors; g = int2 A + int4 B in groups of g (#1855: 64, #2135: 32)
    lqer_top_k: int = 0  # correct only the k matrices of largest error (#1855: 3); 0 = every matrix
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
        if not self.sdclip_k > 0.0 or not self.sdclip_k_embed >= 0.0:
            raise ConfigError(f"quant.sdclip_k={self.sdclip_k} must be > 0, quant.sdclip_k_embed >= 0 (0 = sdclip_k)")
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
        if self.lqer_asym_group not in (0, 16, 32, 64, 128):  # compress/lqer.py LQER_GROUPS
            raise ConfigError(f"quant.lqer_asym_group={self.lqer_asym_group}: choose 0 (fp16 factors), "
                              "16, 32, 64 or 128")
        _at_least("quant", self, 0, "lqer_top_k", hint=" (0 = every matrix)")
        if self.qat not in ("off", "ste", "noise"):
            raise ConfigError(f"quant.qat={self.qat!r}: choose off, ste or noise")
        if not 0.0 <= self.qat_start_frac <= 1.0:
            raise ConfigError(f"quant.qat_start_frac={self.qat_start_frac} must be in [0, 1]")


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
