"""The scoring recipe of a run (`eval.*`): which evaluator and every setting it reads.

Split from config.py (which re-exports EvalConfig and EVAL_METHODS) so each config module stays small;
like config.py it is standard library only, since it ships inside artifacts and exported scripts.
"""
from __future__ import annotations

from dataclasses import dataclass

from loopgolf.config_fields import ConfigError

EVAL_METHODS = ("plain", "sliding", "ttt_sgd", "ttt_lora", "mixture", "ngram_tilt")  # eval/recipe.EVALUATORS
# eval.lora_targets kinds (eval/lora_targets.py): the attention Linears c_q/c_k/c_v/proj, the MLP
# Linears fc/proj, PR #1855's block-level adapters (o: attention input -> attention output, mlp: MLP
# input -> MLP output), the LM head (before the cap) and every other nn.Linear. "all" = every nn.Linear.
LORA_TARGET_KINDS = ("q", "k", "v", "proj", "fc", "mlp_proj", "o", "mlp", "head", "other")
LORA_ALL_LINEARS = ("q", "k", "v", "proj", "fc", "mlp_proj", "other")


def parse_lora_targets(spec: str) -> tuple[str, ...]:
    """eval.lora_targets "k,o,mlp,head" -> its kinds in LORA_TARGET_KINDS order ("all" = every nn.Linear)."""
    kinds: set[str] = set()
    for item in (t.strip() for t in spec.split(",")):
        if item == "all":
            kinds.update(LORA_ALL_LINEARS)
        elif item in LORA_TARGET_KINDS:
            kinds.add(item)
        else:
            raise ConfigError(f"eval.lora_targets={spec!r}: {item!r} is not one of all, "
                              f"{', '.join(LORA_TARGET_KINDS)} (comma-separated, e.g. 'q,k,v,o,mlp,head')")
    return tuple(k for k in LORA_TARGET_KINDS if k in kinds)


def parse_short_chunks(spec: str) -> tuple[tuple[int, int], ...]:
    """eval.lora_short_chunks "256:8,2000:24" -> ((256, 8), (2000, 24)), sorted by document length:
    a document of at most 256 tokens is scored in chunks of 8 targets, one of at most 2000 in
    chunks of 24, a longer one in eval.lora_chunk ("" = every document in eval.lora_chunk)."""
    steps = []
    for item in (t.strip() for t in spec.split(",") if t.strip()):
        parts = item.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"eval.lora_short_chunks={spec!r}: {item!r} is not 'max_doc_tokens:chunk' "
                              "with positive integers (PR #2014: '256:8,2000:24')")
        steps.append((int(parts[0]), int(parts[1])))
    return tuple(sorted(steps))


@dataclass
class EvalConfig:
    """The scoring recipe: which evaluator (eval/recipe.EVALUATORS) and every setting it reads.

    It is part of the run config, so config.json and each artifact carry the recipe that scored it.
    Prefixes name the method a field belongs to (sgd_ = ttt_sgd, lora_ = ttt_lora, mix_ = mixture,
    tilt_ = ngram_tilt).
    """

    method: str = "plain"  # plain | sliding | ttt_sgd | ttt_lora | mixture | ngram_tilt
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
    lora_targets: str = "all"  # adapted parts, LORA_TARGET_KINDS (PR #1855: "q,k,v,o,mlp,head")
    lora_per_visit: bool = False  # one adapter per visit of a looped block (PR #1855), not one per module
    # phases after the first prefix*(k+1)/phases documents, each over those documents (PR #1855: 2500);
    # 0 = after equal slices of the document batches, over every document scored so far
    lora_phase_prefix_docs: int = 0
    lora_short_chunks: str = ""  # "max_doc_tokens:chunk,..." smaller chunks for short documents (PR #2014)
    # mixture: normalized online mixture of the network with n-gram experts
    mix_eta: float = 1.0  # Hedge learning rate; 1 = Bayesian model averaging
    mix_network_prior: float = 0.97  # prior weight of the network; the rest is split evenly
    mix_trigram_buckets: int = 4096
    # ngram_tilt: token-only n-gram tilt on sliding windows (PR #2135; eval/ngram_tilt.py)
    tilt_order: int = 16  # context of order - 1 tokens
    tilt_threshold: float = 0.8  # the top next token's share of the context's earlier positions
    tilt_boost: float = 2.625  # beta: log-odds added to the hinted token

    def validate(self, seq_len: int = 0) -> None:
        """seq_len = data.seq_len (the context when eval.context = 0); 0 skips the stride check."""
        if self.method not in EVAL_METHODS:
            raise ConfigError(f"eval.method={self.method!r}: choose one of {', '.join(EVAL_METHODS)}")
        if self.context < 0:
            raise ConfigError(f"eval.context={self.context} must be >= 0 (0 = data.seq_len)")
        ctx = self.context or seq_len
        if ctx and not 1 <= self.stride <= ctx and self.method in ("sliding", "ttt_sgd", "mixture", "ngram_tilt"):
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
                     "lora_phases", "lora_phase_lr", "lora_phase_seq_len", "lora_phase_prefix_docs", "mix_eta"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 0")
        for name in ("sgd_momentum", "lora_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be in [0, 1)")
        parse_lora_targets(self.lora_targets)
        parse_short_chunks(self.lora_short_chunks)
        if self.lora_phase_prefix_docs and not self.lora_phases:
            raise ConfigError(f"eval.lora_phase_prefix_docs={self.lora_phase_prefix_docs} needs "
                              "eval.lora_phases >= 1 (the phases it places), or set it to 0")
        if not 0.0 < self.mix_network_prior < 1.0:
            raise ConfigError(f"eval.mix_network_prior={self.mix_network_prior} must be in (0, 1)")
        if self.tilt_order < 2 or not 0.0 < self.tilt_threshold <= 1.0 or not 0.0 <= self.tilt_boost < 50.0:
            raise ConfigError(f"eval.tilt_order={self.tilt_order} must be >= 2, eval.tilt_threshold="
                              f"{self.tilt_threshold} in (0, 1], eval.tilt_boost={self.tilt_boost} in "
                              "[0, 50) (PR #2135: 16, 0.8, 2.625)")
