import torch

from loopgolf.config import ModelConfig
from loopgolf.model.features import BOS_ID, BigramHash, SmearGate
from loopgolf.model.gpt import GPT
from loopgolf.model.recurrence import layer_specs, parse_plan, parse_stages, stage_index


def _cfg(**kw):
    base = dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48)
    base.update(kw)
    return ModelConfig(**base)


def _randomize(model):
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_xsa_flags_apply_per_virtual_layer_even_for_shared_blocks():
    specs = layer_specs(parse_plan("2x3"), xsa_last=2)
    assert [s.xsa for s in specs] == [False, False, False, False, True, True]
    assert [(s.block, s.visit) for s in specs] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]


def test_loop_activation_changes_the_graph_only_where_the_plan_says():
    stages = parse_stages("11@0.48", "11:4-5x2")
    off, on = stages[0].plan.schedule, stages[1].plan.schedule
    assert off == tuple(range(11))
    assert on == (0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10)
    assert on[:6] == off[:6] and on[8:] == off[6:]  # only the inserted repeat differs
    assert stage_index(stages, 0.47, 10**6) == 0 and stage_index(stages, 0.48, 0) == 1
    model = _randomize(GPT(_cfg(plan="4:1-2x2", plan_stages="4@0.5", unet_skips=False)))
    calls = []
    for i, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    idx = torch.randint(0, 64, (1, 8))
    for frac, expected in ((0.1, [0, 1, 2, 3]), (0.9, [0, 1, 2, 1, 2, 3])):
        calls.clear()
        model.select_stage(frac, 0)
        model(idx, idx)
        assert calls == expected


def test_progressive_depth_stages():
    stages = parse_stages("3x2@0.3;3x3@0.5", "3x4")
    assert [stage_index(stages, f, 0) for f in (0.0, 0.29, 0.3, 0.49, 0.5, 1.0)] == [0, 0, 1, 1, 2, 2]
    assert [s.plan.n_virtual for s in stages] == [6, 9, 12]


def test_eval_time_depth_runs_more_loops():
    model = _randomize(GPT(_cfg(plan="2x2", loop_embed=True, cross_repeat=True)))
    idx = torch.randint(0, 64, (2, 8))
    base = model(idx, idx).mean()
    model.set_eval_plan("2x4")
    assert model.plan.n_virtual == 8
    deeper = model(idx, idx).mean()
    assert torch.isfinite(deeper) and deeper != base


def test_smear_gate_never_mixes_across_a_document_start():
    gate = SmearGate(4, init=0.0)
    x = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    idx = torch.tensor([[5, BOS_ID, 7]])
    out = gate(x, idx)
    assert torch.equal(out[0, 1], x[0, 1])  # the BOS position is untouched
    assert torch.allclose(out[0, 2], 0.5 * x[0, 2] + 0.5 * x[0, 1])


def test_bigram_hash_buckets():
    bh = BigramHash(101, 8, 16)
    idx = torch.tensor([[3, 7, 9]])
    h = bh.bucket(idx)
    assert h[0, 0] == 100
    assert h[0, 1] == (36313 * 7 ^ 27191 * 3) % 100
    assert torch.count_nonzero(bh(idx)) == 0  # zero-init projection: transparent at start


def test_optional_features_start_transparent():
    """Loop embeddings, cross-repeat, value embeddings and V-injection are zero at init, so a model
    with them computes the same loss as the plain one."""
    idx = torch.randint(0, 64, (2, 8))
    plain = GPT(_cfg(plan="2x2"))
    fancy = GPT(_cfg(plan="2x2", loop_embed=True, cross_repeat=True, value_embeds=2, ve_dim=8,
                     ve_layers="-1"))
    fancy.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(plain.blocks[0].attn.proj.weight, std=0.1)
    fancy.blocks[0].attn.proj.weight.data.copy_(plain.blocks[0].attn.proj.weight)
    assert torch.allclose(plain(idx, idx), fancy(idx, idx), atol=1e-6)


def test_parallel_residual_and_partial_rope_and_ln_scale_run():
    model = _randomize(GPT(_cfg(plan="4", parallel_from=2, rope_dims=4, ln_scale=True, skip_gated=True,
                                per_layer_scales=True, untie_repeat_mlp=True)))
    idx = torch.randint(0, 64, (2, 8))
    assert torch.isfinite(model(idx, idx)).all()


def test_lora_starts_as_a_no_op_and_is_per_virtual_layer():
    idx = torch.randint(0, 64, (2, 8))
    plain = _randomize(GPT(_cfg(plan="1x3")))
    lora = GPT(_cfg(plan="1x3", lora_rank=4))
    lora.load_state_dict(plain.state_dict(), strict=False)
    assert torch.allclose(plain(idx, idx), lora(idx, idx), atol=1e-6)  # B = 0
    assert lora.lora_q_a.shape == (3, 4, 32) and lora.lora_k_b.shape == (3, 16, 4)
    torch.nn.init.normal_(lora.lora_v_b, std=0.1)
    lora(idx, idx).mean().backward()
    assert all(lora.lora_v_a.grad[v].abs().sum() > 0 for v in range(3))  # each loop has its own


def test_mtp_heads_change_only_the_training_loss():
    idx = torch.randint(0, 64, (2, 8))
    model = _randomize(GPT(_cfg(plan="2", mtp_heads=2)))
    model.eval()
    plain = model(idx, idx)
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(
        model.logits(idx).view(-1, 64), idx.view(-1), reduction="none").view(2, 8))
    model.train()
    trained = model(idx, idx)
    assert (trained[:, :-1] > plain[:, :-1]).all()  # auxiliary losses added where a target exists
    assert torch.allclose(trained[:, -1], plain[:, -1])  # the last position has no t+2 target


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
