import copy

import pytest
import torch

from loopgolf.config import ModelConfig
from loopgolf.model.gpt import GPT
from loopgolf.model.recurrence import parse_plan
from loopgolf.presets import get_preset


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48), **kw})


def _randomize(model, seed=1):
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_baseline_preset_has_exact_challenge_parameter_count():
    model = GPT(get_preset("baseline").model)
    assert model.num_params() == 17_059_912  # NaiveBaseline train.log


def test_universal_preset_parameter_count():
    model = GPT(get_preset("universal").model)
    assert model.plan.n_blocks == 1 and model.plan.n_virtual == 12
    assert model.num_params() == 3_478_536


def test_shared_block_is_one_module_and_gets_gradient_from_every_loop():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="1x3")
    model = GPT(cfg)
    assert len(model.blocks) == 1
    torch.nn.init.normal_(model.blocks[0].attn.proj.weight, std=0.02)
    torch.nn.init.normal_(model.blocks[0].mlp.proj.weight, std=0.02)
    idx = torch.randint(0, 64, (2, 8))
    model(idx, idx).mean().backward()
    assert model.blocks[0].attn.c_q.weight.grad.abs().sum() > 0


def test_blocks_start_as_identity_so_loss_is_independent_of_depth():
    torch.manual_seed(0)
    idx = torch.randint(0, 64, (2, 8))
    losses, emb = [], None
    for plan in ("1", "2x3"):
        cfg = ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan=plan,
                          unet_skips=False)
        model = GPT(cfg)
        if emb is None:
            emb = model.tok_emb.weight.detach().clone()
        model.tok_emb.weight.data.copy_(emb)
        losses.append(model(idx, idx).mean().item())
    assert abs(losses[0] - losses[1]) < 1e-5


def test_forward_returns_per_token_nats_and_causality():
    cfg = ModelConfig(vocab_size=64, dim=32, n_heads=2, n_kv_heads=2, mlp_hidden=64, plan="3")
    model = _randomize(GPT(cfg), seed=0)
    idx = torch.randint(0, 64, (1, 10))
    out = model.logits(idx)
    idx2 = idx.clone()
    idx2[0, 7] = (idx2[0, 7] + 1) % 64
    out2 = model.logits(idx2)
    assert torch.allclose(out[0, :7], out2[0, :7], atol=1e-6)  # future tokens do not leak
    assert not torch.allclose(out[0, 7:], out2[0, 7:])
    nll = model(idx, idx)
    assert nll.shape == (1, 10) and nll.dtype == torch.float32
    ref = torch.nn.functional.cross_entropy(out.view(-1, 64), idx.view(-1), reduction="none")
    assert torch.allclose(nll.view(-1), ref, atol=1e-6)
    assert out.abs().max() <= cfg.logit_softcap


def test_mlp_variants_build_and_run():
    for mlp in ("relu2", "leaky_relu2", "swiglu"):
        model = GPT(_cfg(mlp=mlp, n_kv_heads=1, plan="2"))
        idx = torch.randint(0, 64, (2, 5))
        assert torch.isfinite(model(idx, idx)).all()


def test_the_stage_argument_picks_the_plan():
    model = _randomize(GPT(_cfg(plan="4:1-2x2", plan_stages="4@0.5", unet_skips=False)))
    assert [st.plan.schedule for st in model.stages] == [(0, 1, 2, 3), (0, 1, 2, 1, 2, 3)]
    calls = []
    for i, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    idx = torch.randint(0, 64, (1, 8))
    for stage, expected in ((0, [0, 1, 2, 3]), (1, [0, 1, 2, 1, 2, 3]), (-1, [0, 1, 2, 1, 2, 3])):
        calls.clear()
        model(idx, idx, stage=stage)
        assert calls == expected
    assert torch.equal(model.logits(idx, stage=1), model.logits(idx))
    assert not torch.equal(model.logits(idx, stage=0), model.logits(idx))


def test_flops_per_token_counts_the_stage_plan():
    model = GPT(_cfg(plan="2x3", plan_stages="2x1@0.5"))
    d, h = 32, 48
    per_layer = 6 * (d * d + 2 * d * 16 + d * d + 2 * d * h) + 6 * 16 * d
    head = 6 * 64 * d
    assert model.flops_per_token(16, stage=0) == head + 2 * per_layer
    assert model.flops_per_token(16) == head + 6 * per_layer


FANCY = dict(plan="1+2x2+1", loop_embed=True, cross_repeat=True, value_embeds=2, per_layer_scales=True,
             lora_rank=2, untie_repeat_mlp=True, skip_gated=True, xsa_last=2, ve_dim=8, ve_layers="-1",
             bigram_buckets=16, bigram_dim=8, smear_gate=True, ln_scale=True, parallel_from=2)


def test_at_the_trained_plan_equals_forward():
    model = _randomize(GPT(_cfg(**FANCY)))
    idx = torch.randint(0, 64, (2, 8))
    view = model.at(model.plan.with_loops(2))
    assert torch.equal(view(idx, idx), model(idx, idx))
    assert torch.equal(view.logits(idx), model.logits(idx))
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}


def test_hidden_is_what_unembed_and_nll_take():
    """GPT.hidden / PlanView.hidden: the final normalized states behind logits() and forward()
    (eval/lora.py's head adapter builds on them)."""
    model = _randomize(GPT(_cfg(**FANCY))).eval()
    idx = torch.randint(0, 64, (2, 8))
    h = model.hidden(idx)
    assert h.shape == (2, 8, 32)
    assert torch.equal(model.unembed(h), model.logits(idx)) and torch.equal(model.nll(h, idx), model(idx, idx))
    view = model.at(model.plan.with_loops(3))
    assert torch.equal(view.model.unembed(view.hidden(idx)), view.logits(idx))
    assert view.head_weight() is model.head_weight() and view.logit_cap is model.logit_cap


def test_eval_time_depth_runs_more_loops_on_the_same_weights():
    model = _randomize(GPT(_cfg(**FANCY)))
    idx = torch.randint(0, 64, (2, 8))
    deeper = model.at(model.plan.with_loops(4))
    assert deeper.plan.n_virtual == 10 and deeper.flops_per_token(8) > model.flops_per_token(8)
    out = deeper(idx, idx)
    assert torch.isfinite(out).all() and not torch.allclose(out, model(idx, idx))
    out.mean().backward()
    assert model.loop_embed.grad is not None  # gradients reach the shared weights


def test_at_a_plan_that_does_not_fit_raises_a_clear_error():
    model = GPT(_cfg(plan="2x2", loop_embed=True))
    with pytest.raises(ValueError, match="with_loops"):
        model.at(parse_plan("2x4"))  # parsed on its own: slots 4..7 do not exist
    with pytest.raises(ValueError, match="blocks"):
        model.at(parse_plan("3x2"))


def test_shipped_state_drops_training_only_heads_and_is_detached_cpu():
    model = GPT(_cfg(plan="2", mtp_heads=2))
    state = model.shipped_state()
    assert set(state) == {k for k in model.state_dict() if not k.startswith("mtp_heads.")}
    assert any(k.startswith("mtp_heads.") for k in model.state_dict())
    assert all(not t.requires_grad and t.device.type == "cpu" for t in state.values())


def test_deepcopy_gives_an_independent_model():
    """compress/diagnostics.py deep-copies the model: the copy's layer ops must use the copy's weights."""
    model = _randomize(GPT(_cfg(**FANCY)))
    idx = torch.randint(0, 64, (2, 8))
    twin = copy.deepcopy(model)
    assert torch.equal(twin(idx, idx), model(idx, idx))
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    assert not torch.allclose(twin(idx, idx), model(idx, idx))
    assert torch.equal(copy.deepcopy(model)(idx, idx), model(idx, idx))


def test_optional_features_start_transparent():
    """Every trick's parameters start so that a model with them computes the plain model's loss."""
    idx = torch.randint(0, 64, (2, 8))
    plain = GPT(_cfg(plan="1+2x2+1"))
    torch.nn.init.normal_(plain.blocks[0].attn.proj.weight, std=0.1)
    fancy = GPT(_cfg(plan="1+2x2+1", loop_embed=True, cross_repeat=True, value_embeds=2, ve_dim=8,
                     ve_layers="-1", lora_rank=2, untie_repeat_mlp=True, bigram_buckets=16, bigram_dim=8))
    fancy.load_state_dict(plain.state_dict(), strict=False)
    assert torch.allclose(plain(idx, idx), fancy(idx, idx), atol=1e-6)


def test_parallel_residual_partial_rope_ln_scale_and_gated_skips_run():
    model = _randomize(GPT(_cfg(plan="4", parallel_from=2, rope_dims=4, ln_scale=True, skip_gated=True,
                                per_layer_scales=True, untie_repeat_mlp=True)))
    idx = torch.randint(0, 64, (2, 8))
    assert torch.isfinite(model(idx, idx)).all()


def test_shipped_artifact_has_no_mtp_heads(tiny_args, tmp_path):
    import json

    from loopgolf.cli import main
    from loopgolf.compress.artifact import read_artifact
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", *tiny_args, "--set", "model.mtp_heads=2", "--set",
                 "train.max_steps=2", "--run-dir", str(run)]) == 0
    state, meta = read_artifact(run / "model.lgz")
    assert not any(k.startswith("mtp_heads.") for k in state) and meta["config"]["model"]["mtp_heads"] == 0
    assert json.loads((run / "config.json").read_text())["model"]["mtp_heads"] == 2
