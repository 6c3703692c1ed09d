"""The parameter table: every parameter and state-dict entry of every preset matches exactly one row,
unknown names fail by name, and optimizer, storage and QAT agree because they read the same row."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from loopgolf.compress.rules import assign_schemes
from loopgolf.config import OptimConfig
from loopgolf.model.gpt import GPT
from loopgolf.model.params import OPTIMIZERS, PARAM_KINDS, STORAGE, kind_of, kinds_of
from loopgolf.presets import PRESETS, get_preset


def meta_model(name: str) -> GPT:
    with torch.device("meta"):  # real sizes, no memory
        return GPT(get_preset(name).model)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_tensor_matches_exactly_one_row(name):
    model = meta_model(name)
    kinds = kinds_of(model.named_parameters())  # raises, listing offenders, unless one row each
    assert len(kinds) == len(list(model.parameters()))
    state = model.state_dict()
    assert set(kinds_of(state.items())) == set(state)


def test_rows_are_well_formed():
    assert len({k.kind for k in PARAM_KINDS}) == len(PARAM_KINDS)
    fields = set(OptimConfig.__dataclass_fields__)
    for k in PARAM_KINDS:
        assert k.optimizer in OPTIMIZERS and k.storage in STORAGE, k.kind
        assert {f for f in (k.lr, k.wd, k.lr_untied) if f} <= fields, k.kind
        assert (k.optimizer == "none") == (k.lr == ""), k.kind
        assert (k.storage == "none") == k.training_only, k.kind


def test_a_made_up_name_fails_listing_it():
    with pytest.raises(ValueError, match=r"mystery_gain float32\[3\]: rows matched: none"):
        kind_of("mystery_gain", torch.zeros(3))
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.c_q\.weight float32\[2, 3, 4\]"):
        kind_of("blocks.0.attn.c_q.weight", torch.zeros(2, 3, 4))  # shape condition: 2-D only
    with pytest.raises(ValueError, match="odd.*weird"):  # every offender in one message
        kinds_of([("odd", torch.zeros(1)), ("tok_emb.weight", torch.zeros(2, 2)),
                  ("weird", torch.zeros(1))])


def test_known_kinds():
    t1, t2 = torch.zeros(4), torch.zeros(4, 4)
    assert kind_of("blocks.3.attn.c_k.weight", t2).kind == "attn_matrix"
    assert kind_of("repeat_mlps.1.fc.weight", t2).kind == "mlp_matrix"
    assert kind_of("blocks.0.layer_attn_scale", t1).kind == "control"
    assert kind_of("layer_resid_mix", torch.zeros(3, 2, 4)).kind == "control"
    assert kind_of("value_embeds.1.weight", t2).kind == "embedding"
    assert kind_of("bigram.proj.weight", t2).kind == "feature_matrix"
    mtp = kind_of("mtp_heads.0.proj.weight", t2)
    assert mtp.training_only and mtp.storage == "none" and mtp.optimizer == "muon"
    emb = kind_of("tok_emb.weight", t2)
    assert emb.lr_field(True) == "tied_embed_lr" and emb.lr_field(False) == "embed_lr"
    for name in ("blocks.0.attn_norm.weight", "blocks.2.mlp_norm.weight", "final_norm.weight"):  # PR #29
        norm = kind_of(name, t1)
        assert (norm.kind, norm.optimizer, norm.storage) == ("norm", "adam", "control_fp32")
    buf = kind_of("anything.at.all", torch.zeros(3, dtype=torch.int64))
    assert buf.kind == "integer_buffer" and buf.storage == "raw"


CONTROLS = ["loop_embed", "cross_repeat_scales", "ve_scales", "skip_gates", "skip_weights",
            "bigram.scale", "smear.gate", "ve_inject.scales", "blocks.0.attn.q_gain",
            "blocks.0.resid_mix", "layer_mlp_scale", "recurrence_scales"]


@pytest.mark.parametrize("name", CONTROLS)
def test_control_tensors_are_trained_and_stored_as_control(name):
    """loop_embed used to be trained as a control tensor (Adam, scalar_lr) but stored as fp16: the
    two tables disagreed. Now both read one row."""
    t = torch.zeros(3, 4)
    k = kind_of(name, t)
    assert (k.kind, k.optimizer, k.lr, k.storage) == ("control", "adam", "scalar_lr", "control_fp32")
    assert assign_schemes({name: t}, get_preset("tiny").quant) == {name: "fp32"}


def test_asym_logit_caps_have_their_own_row():
    """AsymLogit (model.asym_logit): Adam at optim.asym_logit_lr (0 = frozen, PR #1923), no weight
    decay, shipped as fp32 control tensors."""
    model = GPT(dataclasses.replace(get_preset("tiny").model, asym_logit=True))
    kinds = kinds_of(model.named_parameters())
    caps = {n: k for n, k in kinds.items() if n.startswith("logit_cap.")}
    assert sorted(caps) == ["logit_cap.softcap_neg", "logit_cap.softcap_pos"]
    assert {(k.kind, k.optimizer, k.lr, k.wd, k.storage) for k in caps.values()} == {
        ("logit_cap", "adam", "asym_logit_lr", "", "control_fp32")}
    state = {n: t for n, t in model.shipped_state().items() if n.startswith("logit_cap.")}
    assert assign_schemes(state, get_preset("tiny").quant) == dict.fromkeys(caps, "fp32")


class FakeLoRA(nn.Module):
    """The LoRA names of the refactored model: a module `lora` with (n_virtual, r, d) stacks."""

    def __init__(self) -> None:
        super().__init__()
        self.lora = nn.Module()
        for n in "qkvo":
            self.lora.register_parameter(f"{n}_a", nn.Parameter(torch.zeros(5, 2, 8)))
            self.lora.register_parameter(f"{n}_b", nn.Parameter(torch.zeros(5, 8, 2)))


def test_lora_stacks_are_muon_matrices():
    kinds = kinds_of(FakeLoRA().named_parameters())
    assert sorted(kinds) == sorted(f"lora.{n}_{ab}" for n in "qkvo" for ab in "ab")
    assert {(k.kind, k.optimizer, k.lr) for k in kinds.values()} == {("lora", "muon", "matrix_lr")}
    with pytest.raises(ValueError, match="lora.q_a"):
        kind_of("lora.q_a", torch.zeros(8, 2))  # a stack, never a plain matrix


def test_frontier_tensors_match_their_own_row():
    """The frontier tricks' gates and lane mixes: Adam at the scalar LR, stored fp32 (PR #1855)."""
    from loopgolf.config import ModelConfig
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48, plan="4",
                      attn_gate_window=12, smear_window=12, lanes_from=2, doc_isolated_attn=True)
    kinds = kinds_of(GPT(cfg).named_parameters())
    new = {n for n, k in kinds.items() if k.kind == "frontier_control"}
    assert new == {"lane_post", "lane_resid", "attn_gate.weight", "smear_in.weight", "smear_in.lam"}
    row = kinds["lane_post"]
    assert (row.optimizer, row.lr, row.storage) == ("adam", "scalar_lr", "control_fp32")
