"""eval.lora_targets: which modules of a GPT get LoRA TTT adapters, and how often each runs per forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from loopgolf.config import ConfigError, ModelConfig
from loopgolf.config_eval import parse_lora_targets, parse_short_chunks
from loopgolf.eval.lora_targets import LoRATargetError, adapter_sites, count_visits
from loopgolf.model.gpt import GPT

CPU = torch.device("cpu")


def looped_gpt(**kw) -> GPT:
    """3 blocks, block 1 run twice: virtual layers 0 1 1 2."""
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, dim=16, n_heads=2, n_kv_heads=1, mlp_hidden=32, plan="3:1-1x2", **kw))


def test_parse_targets_orders_and_expands_all():
    assert parse_lora_targets("head,mlp,o,k") == ("k", "o", "mlp", "head")
    assert parse_lora_targets("all") == ("q", "k", "v", "proj", "fc", "mlp_proj", "other")
    assert parse_lora_targets("all,head") == ("q", "k", "v", "proj", "fc", "mlp_proj", "head", "other")
    with pytest.raises(ConfigError, match="'qq' is not one of all"):
        parse_lora_targets("k,qq")


def test_parse_short_chunks_sorts_and_refuses_bad_items():
    assert parse_short_chunks("2000:24,256:8") == ((256, 8), (2000, 24))
    assert parse_short_chunks("") == ()
    for bad in ("256", "256:0", "a:8", "1:2:3"):
        with pytest.raises(ConfigError, match="is not 'max_doc_tokens:chunk'"):
            parse_short_chunks(bad)


def test_all_is_every_linear_in_module_order():
    """The default keeps the behaviour before targets existed: every nn.Linear, modules() order."""
    model = looped_gpt()
    sites = adapter_sites(model, "all")
    assert [s.module for s in sites] == [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [s.kind for s in sites[:6]] == ["q", "k", "v", "proj", "fc", "mlp_proj"]


def test_pr1855_sites_known_answer():
    model = looped_gpt()
    sites = adapter_sites(model, "q,k,v,o,mlp,head")
    per_block = ["o", "q", "k", "v", "mlp"]  # Attention before its Linears (named_modules order)
    assert [s.kind for s in sites] == per_block * 3 + ["head"]
    assert [s.name for s in sites[:5]] == ["blocks.0.attn", "blocks.0.attn.c_q", "blocks.0.attn.c_k",
                                           "blocks.0.attn.c_v", "blocks.0.mlp"]
    dims = {s.kind: (s.in_features, s.out_features) for s in sites}
    # kv_dim = 1 head of 8; o and mlp are dim -> dim; the head reads dim and writes the vocabulary
    assert dims == {"o": (16, 16), "q": (16, 16), "k": (16, 8), "v": (16, 8), "mlp": (16, 16), "head": (16, 64)}
    assert sites[-1].module is None
    assert [s.kind for s in adapter_sites(model, "k,o,mlp,head")] == ["o", "k", "mlp"] * 3 + ["head"]
    assert [s.kind for s in adapter_sites(model, "q,v,o,mlp,head")] == ["o", "q", "v", "mlp"] * 3 + ["head"]


def test_missing_sites_are_named():
    lin = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(LoRATargetError, match="'head' needs a GPT"):
        adapter_sites(lin, "q,head")
    with pytest.raises(LoRATargetError, match="has no o, q to adapt"):
        adapter_sites(lin, "q,o")
    assert len(adapter_sites(lin, "all")) == 1


def test_count_visits_follows_the_plan():
    model = looped_gpt()
    sites = [s for s in adapter_sites(model, "q,o,mlp") if s.module is not None]
    visits = count_visits(model, [s.module for s in sites], CPU)
    by_name = dict(zip((s.name for s in sites), visits))
    assert by_name["blocks.1.attn"] == by_name["blocks.1.attn.c_q"] == by_name["blocks.1.mlp"] == 2
    assert by_name["blocks.0.attn.c_q"] == by_name["blocks.2.mlp"] == 1
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())  # probe hooks removed
    assert model.training  # mode restored
    with pytest.raises(LoRATargetError, match="no logits"):
        count_visits(nn.Linear(2, 2), [], CPU)
