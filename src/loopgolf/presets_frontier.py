"""The frontier of the 10-minute track as presets: PR #1855 (merged record 1.0611) and PR #2135 (1.05651).

`record-frontier` is PR #1855 (records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_
BOSSmearFix_9HpStack_1.0611: train_gpt.py "L", its README run command and train_seed42.log);
`record-frontier-2135` is PR #2135 (records/.../2026-05-01_SP8192_PR2130Base_Calib32, the #2130
stack plus 32 GPTQ calibration batches). Each docstring lists every deviation from the published
code and why. Schedules are fractions of the run, converted from the published step counts by the
published step totals (#1855: 4,931 steps, the 3-seed mean of its README; #2135: 4,994).
presets.py merges FRONTIER_PRESETS into its registry; this module imports only the config.
"""
from __future__ import annotations

from typing import Callable

from loopgolf.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, QuantConfig, RunConfig, TrainConfig

PR1855_PARAMS = 35_945_671  # train_seed42.log "model_params:35945671"
PR2135_PARAMS = 35_945_673  # train_seed42.log "model_params:35945673" (+2 AsymLogit caps)
# #1855 keeps a two-lane row for every one of its 11 layers (parallel_post_lambdas (11, 2, 2) +
# parallel_resid_lambdas (11, 2), L1236-1241) but reads only those of the two-lane layers 8-10;
# model.lanes_from sizes lane_post / lane_resid for those 3 blocks: 8 unused rows x (4 + 2) fewer.
UNUSED_LANE_ROWS = 8 * (2 * 2 + 2)


def record_frontier() -> RunConfig:
    """The merged record (PR #1855, val_bpb 1.0611): 11 layers d=512, 8/4 heads, LeakyReLU(0.5)^2 MLP
    2048, layers 3-5 run three times from 35 % of training (17 virtual layers), two-lane parallel
    decoder from layer 8, sparse attention gate (window 12, scale 0.5), BOS-fixed input-dependent
    SmearGate (window 12), document-isolated attention, XSA on all layers, partial RoPE 16, LN
    scale, QK gain 5, gated U-Net skips, orthogonal init, vocab 8192, Polar-Express MuonEq-R, fused
    softcapped CE; GPTQ int6 + int7 embedding + LQER asymmetric int4 rank 4 on the 3 worst
    matrices; score-first per-document LoRA TTT (q, k, v, o, MLP and LM-head adapters, one set per
    virtual layer) with 3 global phases in a 2500-document prefix.
    35,945,623 parameters: the log's 35,945,671 less UNUSED_LANE_ROWS (48).

    Faithful (train_gpt.py lines): architecture and wiring L1141-1252, L1291-1394 (U-Net pairing of
    the looped 17-layer sequence, 8 skip rows; lanes start before the skip of layer 8, the skip goes
    to lane 0, resid_mix feeds attention only, output mean of the lanes); sparse gate L988-1001,
    L1059-1066; SmearGate L1243-1251, L1332-1337; init L1254-1278 (orthogonal q/k/v/fc, zero
    output projections, tied embedding N(0, 0.005)); optimizer groups L1900-1970 (Muon on the
    matrices lr 0.026, WD 0.095, momentum 0.92 -> 0.97, row-normalized, Polar-Express 5 steps;
    AdamW betas (0.9, 0.99) eps 1e-8 on the tied embedding lr 0.03 WD 0.085 and on every control,
    gate and lane tensor lr 0.02 WD 0.02); grad clip 0.3 on all parameters (L3400); no LR warm-up,
    warm-down over the last 85 % to a floor of 0.1 (L3356-3362); loops on at 35 % of the training
    clock (L3509-3517); 786,432 tokens per step of 2048-token rows, 48 rows per GPU on 8 GPUs;
    GPTQ act-order, damping 0.01, block 128 (L2147-2183), int6 blocks / int7 embedding, SDClip
    scales k * std(row) / qmax in fp16 (L2163); LQER rank 4 on the top 3 by ||E||_F, A int2 per matrix, B
    int4 in groups of 64 (L2206-2217, L2271-2302); TTT LoRA rank 80, alpha 144, lr 1e-4, Adam
    betas (0, 0.99), WD 0.5, 48-token chunks, 64 documents per batch, context 2048; adapters on q,
    k, v (the Linears' inputs), o (attention input -> attention output), MLP (MLP input -> MLP
    output) and the LM head (before the softcap), one set per virtual layer, 17 with the loops on
    (L1427-1507, L1509-1566, L1663-1714: eval.lora_targets="q,k,v,o,mlp,head", lora_per_visit);
    3 global SGD phases (lr 0.001, momentum 0.9, 32-sequence batches) after 833 / 1666 / 2500
    documents, each over those documents (L3032-3037: eval.lora_phase_prefix_docs=2500).

    Deviations (and why):
    - Schedules in run fractions: momentum warm-up 1500 steps -> 0.304 of the run (1500 / 4931);
      EMA decay 0.9965 per step (time constant 285.7 steps, L3521) -> optim.ema_horizon_frac 0.058.
    - Parameter count -48: see UNUSED_LANE_ROWS (the unused rows change nothing but bytes).
    - Documents are isolated within the loader's 2048-token rows: a document crossing a row boundary
      is cut there (#1855 packs each GPU's 98,304 tokens as one varlen row and cuts documents into
      2048-token pieces from their start, L592-699; model/doc_attention.py).
    - One SDClip k for every matrix (#1855: attention 13.0, MLP 11.5, embedding 14.0, L2251-2258;
      loopgolf has one quant.sdclip_k): it starts at 12.85 (#1855's MATRIX_CLIP_SIGMAS) and the
      GPTQ fitter (quant.fit_target) moves it until the artifact fits.
    - The tied embedding is rounded to nearest on its int7 grid, not by GPTQ: #1855 runs GPTQ on it
      with the Hessian of final_norm's output (L2113-2129); loopgolf's collect_hessians hooks
      nn.Linear modules only.
    - Codec: quant.codec=best (zlib/zstd/lzma/brotli chosen per stream, byte-shuffled scales) instead
      of #1855's per-group lrzip ZPAQ with L1 similarity-sorted, transposed rows (L2364-2506):
      lrzip is a system binary, which the artifact may not need. #1855's README puts the lrzip gain
      at ~280 KB over brotli, so the fitter (quant.fit_target 15,990,000) coarsens k for it.
    - The attention gate (1,056 values) and the control tensors ship as fp32 (#1855: int8 per row,
      L2185-2194, and fp16 passthrough): ~5 KB more.
    - GPTQ calibration: 16 micro-batches of 48 rows from the training stream on every rank, summed
      over ranks, inside the training budget (quant.gptq_reserve_s = 5 s, #1950's rule). #1855
      reserved 0.5 s but collected its Hessians after the clock (4.7 s in its log) from 16 shuffled
      batches of rank 0 alone (L2656-2663).
    - Numerics: fp32 master weights under bf16 autocast (#1855 keeps tok_emb in bf16, L2022-2036)
      and Muon momentum in the parameter's dtype (#1855: bf16, L1852); SDPA / FlexAttention /
      FlashAttention-3 varlen as available (#1855: FA3 only) and no Triton fused MLP (L772-886).
    - TTT A is re-drawn per batch (eval.lora_warm_start_a=false; #1855 keeps A warm, L1642, which
      loopgolf supports on one process only).
    - TTT document order: batches of 64 consecutive documents in stream order, so the phases' prefix
      is the stream's first 2500 documents; #1855 sorts the documents by length and scores the
      batches longest first (L2815-2825), so its prefix is the 2500 longest. A phase runs after the
      batch holding its boundary document (#1855: when its scored-document counter passes it).
    - TTT phase SGD: one epoch over the prefix documents cut into context-length sequences at each
      document's end, 32 per step, cosine LR over the steps, clip 1.0; #1855 cuts the concatenated
      prefix into 32,768-token chunks, cosine over chunks, never trains its last chunk, and attends
      within documents by varlen attention (L2926-3019).
    - TTT scoring: a document's last target (the next document's BOS) is scored by the base model
      before any update (eval/ttt.py); #1855 scores it in the document's last chunk. The chunk loss
      is each document's mean over its chunk's targets (#1855: over the 48 chunk columns).
    - Data: sp8192 CaseOps with the byte sidecar is the user's data recipe (`loopgolf data tokenizer
      --transform case`; presets leave data paths empty).
    """
    return RunConfig(
        name="record-frontier",
        model=ModelConfig(vocab_size=8192, dim=512, n_heads=8, n_kv_heads=4, mlp="leaky_relu2",
                          mlp_hidden=2048, plan="11:3-5x3", plan_stages="11@0.35", skip_gated=True,
                          xsa_last=-1, rope_dims=16, ln_scale=True, qk_gain_init=5.0, logit_softcap=30.0,
                          doc_isolated_attn=True, attn_gate_window=12, attn_gate_scale=0.5,
                          smear_window=12, lanes_from=8, fused_ce=True, embed_init_std=0.005,
                          ortho_init=True),
        data=DataConfig(seq_len=2048),
        optim=OptimConfig(matrix_lr=0.026, scalar_lr=0.02, tied_embed_lr=0.03, momentum=0.97,
                          momentum_warmup_start=0.92, momentum_warmup_frac=0.304, ns_steps=5,
                          ns_coeffs="polar", muon_row_norm=True, beta1=0.9, beta2=0.99, adam_eps=1e-8,
                          weight_decay=0.095, adam_weight_decay=0.02, embed_weight_decay=0.085,
                          min_lr_frac=0.1, warmdown_frac=0.85, ema_horizon_frac=0.058, grad_clip=0.3),
        train=TrainConfig(batch_tokens=786_432, micro_batch_seqs=48, budget_s=600.0, max_steps=20_000),
        quant=QuantConfig(scheme="int6_row", bits_rules="tok_emb=7,blocks=6", clip="sdclip",
                          sdclip_k=12.85, row_scale_min=0.0, gptq=True, gptq_calib="train",
                          gptq_calib_batches=16, gptq_reserve_s=5.0, lqer_rank=4, lqer_asym_group=64,
                          lqer_top_k=3, codec="best", shuffle=True, fit_target=15_990_000),
        eval=EvalConfig(method="ttt_lora", lora_rank=80, lora_alpha=144.0, lora_lr=1e-4, lora_beta2=0.99,
                        lora_weight_decay=0.5, lora_chunk=48, lora_docs_per_batch=64, lora_phases=3,
                        lora_phase_lr=0.001, lora_phase_batch_seqs=32, lora_targets="q,k,v,o,mlp,head",
                        lora_per_visit=True, lora_phase_prefix_docs=2500),
    ).validate()


def record_frontier_2135() -> RunConfig:
    """The audited frontier row (PR #2135, val_bpb 1.05651; the PR #2130 stack with 32 GPTQ
    calibration batches): record-frontier plus AsymLogit (two learned logit caps, frozen in training
    as in #2135, whose fused CE keeps the symmetric cap), LQER B groups of 32, 32 calibration
    batches, Muon lr 0.028, 1-phase LoRA TTT (lr 8e-5, WD 2.0, no K adapter) at context 2560. 35,945,625
    parameters: the log's 35,945,673 less UNUSED_LANE_ROWS (48), as in record-frontier.

    Values from the PR's README run command and train_seed42.log (its hyperparameters differ from
    #1855's log in exactly: asym_logit_rescale, eval/ttt_eval_seq_len 2560, gated_attn_quant_gate
    off, gptq_calibration_batches 32, lqer_asym_group 32, matrix_lr 0.028, phased_ttt_num_phases 1,
    ngram_tilt on with token order 16 / threshold 0.8 / boost 2.625, ttt_k_lora off, ttt_lora_lr
    8e-5, ttt_weight_decay 2.0); momentum warm-up 1500 / 4994 steps -> 0.300, EMA 285.7 / 4994 ->
    0.057. Every record-frontier deviation applies, and:
    - The SmearGate keeps its BOS mask: #2135 runs SMEAR_GATE_BOS_FIX=0 (train_gpt.py L1495-1499,
      L1607), which lets the last token of one document leak into the next one's BOS embedding;
      #1855's fix is the intent (presets implement the intent where a published script regressed).
    - The n-gram tilt is not applied: #2135 tilts the TTT scores (L3484-3571, online_ngram_tilt.py);
      loopgolf's tilt (eval.method=ngram_tilt, eval/ngram_tilt.py, with #2135's order, threshold and
      boost as the eval.tilt_* defaults) scores sliding windows and does not compose with ttt_lora.
      `--set eval.method=ngram_tilt` scores the tilt without TTT.
    - TTT adapters as #2135 (TTT_K_LORA=0, L333; q and v always, L1869-1874): q, v, o, MLP and the
      LM head, one set per virtual layer (eval.lora_targets="q,v,o,mlp,head"); the single global
      phase trains on the first 2500 documents (PHASED_TTT_PREFIX_DOCS=2500, NUM_PHASES=1) once
      they are scored. Not the #1953 / #2014 rows' "no Q/V" (TTT_MASK=no_qv: k, o, MLP, head) nor
      #2014's short-document chunks (TTT_SHORT_SCORE_FIRST_STEPS=256:8,2000:24, batch 24): #2135
      runs neither; `--set eval.lora_targets=k,o,mlp,head --set eval.lora_short_chunks=256:8,2000:24`
      scores them.
    - The attention gate ships fp32 (#2135: fp16 passthrough, gated_attn_quant_gate off).
    """
    cfg = record_frontier()
    cfg.name = "record-frontier-2135"
    cfg.model.asym_logit = True
    cfg.optim.matrix_lr = 0.028
    cfg.optim.momentum_warmup_frac = 0.300
    cfg.optim.ema_horizon_frac = 0.057
    cfg.quant.lqer_asym_group = 32
    cfg.quant.gptq_calib_batches = 32
    cfg.eval.context = 2560
    cfg.eval.lora_phases = 1
    cfg.eval.lora_lr = 8e-5
    cfg.eval.lora_weight_decay = 2.0
    cfg.eval.lora_targets = "q,v,o,mlp,head"
    return cfg.validate()


FRONTIER_PRESETS: dict[str, Callable[[], RunConfig]] = {
    "record-frontier": record_frontier,
    "record-frontier-2135": record_frontier_2135,
}
