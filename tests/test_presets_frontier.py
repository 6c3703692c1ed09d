"""The frontier presets (presets_frontier.py): real-size builds with the published parameter counts
(less the documented 48 unused lane rows), #1855's optimizer groups, a scaled-down copy that trains on
CPU, and an artifact at real size that the fitter lands under 16,000,000 bytes with the packed code."""
import dataclasses

import pytest
import torch

import loopgolf.compress.fit as fit_module
from loopgolf.compress.fit import fit_to_budget
from loopgolf.config import BUDGET_BYTES
from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.lab.export import packed_code_bytes
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import PRESETS, get_preset
from loopgolf.presets_frontier import FRONTIER_PRESETS, PR1855_PARAMS, PR2135_PARAMS, UNUSED_LANE_ROWS
from loopgolf.train.loop import Trainer
from loopgolf.train.optim import assign_groups

PUBLISHED = {"record-frontier": PR1855_PARAMS, "record-frontier-2135": PR2135_PARAMS}
# #1855's groups (train_gpt.py L1900-1970), counted from its shapes: Muon on the four banks, AdamW
# on the tied embedding, AdamW on every other tensor (its 66 lane lambdas here 18, see UNUSED_LANE_ROWS)
MUON = 2 * 11 * 512 * 512 + 2 * 11 * 256 * 512 + 2 * 11 * 2048 * 512
EMBED = 8192 * 512
SCALAR_1855 = PR1855_PARAMS - MUON - EMBED


def meta_model(name: str) -> GPT:
    with torch.device("meta"):
        return GPT(get_preset(name).model)


def test_registered_in_presets():
    assert set(FRONTIER_PRESETS) <= set(PRESETS)
    assert [get_preset(n).name for n in FRONTIER_PRESETS] == list(FRONTIER_PRESETS)


@pytest.mark.parametrize("name", sorted(FRONTIER_PRESETS))
def test_real_size_count_is_the_published_one_less_the_unused_lane_rows(name):
    model = meta_model(name)
    assert model.num_params() == PUBLISHED[name] - UNUSED_LANE_ROWS
    assert model.lane_post.numel() + model.lane_resid.numel() == 11 * 6 - UNUSED_LANE_ROWS
    assert model.skip_weights.shape == (8, 512)  # the looped 17-layer plan pairs 8 skips
    assert [s.plan.n_virtual for s in model.stages] == [11, 17]
    groups = assign_groups(model)
    by_opt = {}
    for (opt, lr_field, _), params in groups.items():
        by_opt[(opt, lr_field)] = by_opt.get((opt, lr_field), 0) + sum(p.numel() for _, p in params)
    caps = 2 if name.endswith("2135") else 0  # AsymLogit: frozen (optim.asym_logit_lr = 0)
    assert by_opt.pop(("muon", "matrix_lr")) == MUON
    assert by_opt.pop(("adam", "tied_embed_lr")) == EMBED
    assert by_opt.pop(("adam", "asym_logit_lr"), 0) == caps
    assert by_opt == {("adam", "scalar_lr"): SCALAR_1855 - UNUSED_LANE_ROWS}


def test_the_2135_preset_is_1855_plus_the_later_rows():
    a, b = get_preset("record-frontier"), get_preset("record-frontier-2135")
    changed = {f"{sec}.{k}" for sec in ("model", "optim", "quant", "eval", "train", "data")
               for k, v in dataclasses.asdict(getattr(b, sec)).items() if v != getattr(getattr(a, sec), k)}
    assert changed == {"model.asym_logit", "optim.matrix_lr", "optim.momentum_warmup_frac",
                       "optim.ema_horizon_frac", "quant.lqer_asym_group", "quant.gptq_calib_batches",
                       "eval.context", "eval.lora_phases", "eval.lora_lr", "eval.lora_weight_decay",
                       "eval.lora_targets"}
    assert (b.eval.context, b.eval.lora_phases, b.quant.lqer_asym_group, b.quant.gptq_calib_batches) == (2560, 1, 32, 32)


def test_the_published_ttt_recipes():
    """#1855: q, k, v, o, MLP and head adapters per virtual layer, 3 phases in a 2500-document prefix;
    #2135: the same without K, 1 phase (README run commands and train_seed42.log hyperparameters)."""
    a, b = get_preset("record-frontier").eval, get_preset("record-frontier-2135").eval
    assert (a.lora_targets, a.lora_per_visit, a.lora_phases, a.lora_phase_prefix_docs) == ("q,k,v,o,mlp,head", True, 3, 2500)
    assert (b.lora_targets, b.lora_per_visit, b.lora_phases, b.lora_phase_prefix_docs) == ("q,v,o,mlp,head", True, 1, 2500)
    assert (a.lora_rank, a.lora_chunk, a.lora_docs_per_batch, b.lora_lr, b.lora_weight_decay) == (80, 48, 64, 8e-5, 2.0)
    assert a.lora_short_chunks == b.lora_short_chunks == ""  # #2014's short-document chunks: neither row


@pytest.mark.parametrize("name", sorted(FRONTIER_PRESETS))
def test_scaled_down_copy_trains_on_cpu(name, tiny_shards):
    cfg = get_preset(name)
    cfg.model = dataclasses.replace(cfg.model, vocab_size=512, dim=64, n_heads=4, n_kv_heads=2, mlp_hidden=96,
                                    rope_dims=8)
    cfg.data.seq_len = 32
    cfg.train = dataclasses.replace(cfg.train, batch_tokens=512, micro_batch_seqs=8, budget_s=0.0, max_steps=3,
                                    compile=False, warmup_steps=0, log_every=1)
    cfg.validate()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loader = BatchLoader(TokenStream(tiny_shards["train"]), 32, 512, 8, 0, 1, torch.device("cpu"))
    tr = Trainer(cfg, model, loader, torch.device("cpu"), Logger(None, echo=False))
    res = tr.run()
    assert res["steps"] == 3 and res["final_train_loss"] is not None  # finite
    assert tr.stage == 1  # the loops switched on at 35 % of the run (step 2 of 3)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "blocks.0.attn.c_q.weight" in moved and "attn_gate.weight" in moved and "lane_post" in moved


@pytest.mark.parametrize("name, adapters", [("record-frontier", 17 * 5 + 1), ("record-frontier-2135", 17 * 4 + 1)])
def test_scaled_down_ttt_recipe_runs_score_first(name, adapters, tiny_shards):
    """The preset's LoRA TTT recipe on a scaled-down copy: one adapter set per virtual layer (17 with
    the loops on) plus the head, as #1855's BatchedTTTLoRA sizes them; the prefix phase runs; the
    event log replays as score-first."""
    from loopgolf.data.valset import load_val_set
    from loopgolf.eval.events import EventLog
    from loopgolf.eval.recipe import evaluate
    from loopgolf.lab.legality import check_events

    cfg = get_preset(name)
    cfg.model = dataclasses.replace(cfg.model, vocab_size=512, dim=64, n_heads=4, n_kv_heads=2, mlp_hidden=96,
                                    rope_dims=8)
    ecfg = dataclasses.replace(cfg.eval, context=32, lora_rank=2, lora_chunk=32, lora_docs_per_batch=2,
                               lora_phase_prefix_docs=3, lora_phase_batch_seqs=4)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    vs = load_val_set(str(tiny_shards["dir"] / "*_val_*.bin"), tiny_shards["tokenizer"], 512)
    log = EventLog("ttt_lora", n_tokens=385)
    res = evaluate(model, vs, ecfg, torch.device("cpu"), 32, max_tokens=384, log=log)
    assert res["lora_adapters"] == adapters and res["phases_run"] == ecfg.lora_phases and res["phase_steps"] > 0
    rep = check_events(log, 385)
    assert rep["ok"] and rep["score_first"], rep["problems"]


def test_real_size_artifact_fits_with_the_fitter(monkeypatch):
    """Random N(0, 0.02) weights at real size (record-frontier-2135: the larger of the two layouts),
    fitted by compress/fit.py under the preset's quant.fit_target with the packed code counted.
    For speed the trials use zstd level 3 instead of quant.codec=best (best keeps, per stream, the
    smallest of zstd-22, brotli-11, lzma-9 and zlib-9, each well under zstd-3 on these int8 streams),
    round to nearest instead of GPTQ (same grids and parts), and bisect 3 steps instead of 12
    (~35-55 s on 2 busy cores)."""
    cfg = get_preset("record-frontier-2135")
    model = meta_model(cfg.name)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * (0.02 if v.dim() >= 2 else 1.0) for k, v in model.state_dict().items()}
    code = packed_code_bytes(cfg)
    assert 50_000 < code < 400_000
    monkeypatch.setattr(fit_module, "_STEPS", 3)
    qcfg = dataclasses.replace(cfg.quant, codec="zstd", level=3)
    res = fit_to_budget(state, qcfg, cfg.quant.fit_target, code, meta={"config": cfg.to_dict()})
    assert res.fits and res.total_bytes <= cfg.quant.fit_target < BUDGET_BYTES
    assert res.total_bytes == len(res.blob) + code
    assert res.trials[0]["sdclip_k"] == cfg.quant.sdclip_k and res.qcfg.sdclip_k > cfg.quant.sdclip_k
