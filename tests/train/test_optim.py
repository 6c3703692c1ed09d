import pytest
import torch

from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.optim import Muon, assign_groups, build_optimizers, newton_schulz5


MUON = ("muon", "matrix_lr", "weight_decay")
EMBED = ("adam", "tied_embed_lr", "embed_weight_decay")
SCALAR = ("adam", "scalar_lr", "adam_weight_decay")


def test_baseline_groups_match_the_challenge_split():
    cfg = get_preset("baseline")
    groups = assign_groups(GPT(cfg.model))
    names = {g: {n for n, _ in ps} for g, ps in groups.items()}
    assert set(names) == {MUON, EMBED, SCALAR}
    assert names[EMBED] == {"tok_emb.weight"}
    assert "blocks.0.attn.c_q.weight" in names[MUON] and "blocks.8.mlp.proj.weight" in names[MUON]
    assert {"blocks.0.resid_mix", "blocks.0.attn.q_gain", "skip_weights"} <= names[SCALAR]
    assert len(names[MUON]) == 9 * 6
    total = sum(p.numel() for ps in groups.values() for _, p in ps)
    assert total == 17_059_912
    opts = build_optimizers(GPT(cfg.model), cfg.optim, cfg.model)
    assert [g["name"] for g in opts[0].param_groups] == ["attn_matrix+mlp_matrix"]
    assert sorted(g["name"] for g in opts[1].param_groups) == ["control", "embedding"]


def test_a_parameter_without_rule_fails_loudly():
    model = GPT(get_preset("tiny").model)
    model.register_parameter("mystery", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match="mystery"):
        assign_groups(model)


def test_lora_stacks_are_trained_by_muon_at_matrix_lr():
    """PR #21's topology trains the LoRA factors with Muon; they used to get scalar_lr via Adam."""
    cfg = get_preset("tiny").override(["model.lora_rank=2"])
    groups = assign_groups(GPT(cfg.model))
    lora = [n for n, _ in groups[MUON] if "lora" in n]
    assert len(lora) == 8 and not any("lora" in n for n, _ in groups[SCALAR])


def test_feature_proj_adam_moves_bigram_and_ve_projections_to_the_scalar_adamw():
    """PR #1290 L1882-1886: bigram.proj and the VE projection are in the scalar AdamW, not Muon."""
    cfg = get_preset("tiny").override(["model.bigram_buckets=16", "model.bigram_dim=8", "model.ve_dim=8",
                                       "model.ve_layers=-1", "optim.feature_proj_adam=true"])
    moved = {"bigram.proj.weight", "ve_inject.proj.weight"}
    opts = build_optimizers(GPT(cfg.model), cfg.optim, cfg.model)
    muon = {id(p) for g in opts[0].param_groups for p in g["params"]}
    model = GPT(cfg.model)
    groups = assign_groups(model, to_scalar_adam=frozenset({"feature_matrix"}))
    assert moved <= {n for n, _ in groups[SCALAR]} and not moved & {n for n, _ in groups[MUON]}
    default = assign_groups(model)
    assert moved <= {n for n, _ in default[MUON]}
    assert sum(len(g["params"]) for g in opts[1].param_groups) == sum(len(v) for k, v in groups.items() if k[0] == "adam")
    assert len(muon) == len(groups[MUON])


def test_muon_orthogonalizes_each_matrix_of_a_stack():
    torch.manual_seed(0)
    grad = torch.randn(3, 12, 4)
    stack = torch.nn.Parameter(torch.zeros(3, 12, 4))
    singles = [torch.nn.Parameter(torch.zeros(12, 4)) for _ in range(3)]
    opt_stack = Muon([stack], lr=0.1, momentum=0.0, nesterov=False)
    opt_single = Muon(singles, lr=0.1, momentum=0.0, nesterov=False)
    stack.grad = grad.clone()
    for p, g in zip(singles, grad):
        p.grad = g.clone()
    opt_stack.step()
    opt_single.step()
    for i, p in enumerate(singles):  # the same update as three separate (12, 4) matrices
        assert torch.allclose(stack[i].detach(), p.detach(), atol=1e-6)
    expect = -0.1 * 3 ** 0.5 * newton_schulz5(grad[0], 5).float()  # sqrt(rows / cols) = sqrt(3)
    assert torch.allclose(stack[0].detach(), expect, atol=1e-6)


def test_a_row_blocked_parameter_is_orthogonalized_block_by_block():
    """SwiGLU's fused gate|up weight (muon_row_blocks = 2) gets the update of PR #21's two separate
    (hidden, dim) Linears: each half orthogonalized and scaled sqrt(hidden / dim) on its own, not the
    (2 hidden, dim) matrix's NS and its sqrt(2 hidden / dim)."""
    torch.manual_seed(0)
    grad = torch.randn(2, 24, 8)
    fused = torch.nn.Parameter(torch.zeros(48, 8))
    fused.muon_row_blocks = 2
    halves = [torch.nn.Parameter(torch.zeros(24, 8)) for _ in range(2)]
    opts = Muon([fused], lr=0.1, momentum=0.5), Muon(halves, lr=0.1, momentum=0.5)
    for _ in range(2):  # twice: the momentum buffer keeps the fused shape
        fused.grad = grad.reshape(48, 8).clone()
        for p, g in zip(halves, grad):
            p.grad = g.clone()
        for o in opts:
            o.step()
    assert torch.allclose(fused.detach(), torch.cat([p.detach() for p in halves]), atol=1e-6)
    joint = -0.1 * 6 ** 0.5 * newton_schulz5(grad.reshape(48, 8), 5).float()  # what it used to be
    one = torch.nn.Parameter(torch.zeros(48, 8))
    one.grad = grad.reshape(48, 8).clone()
    Muon([one], lr=0.1, momentum=0.0, nesterov=False).step()
    assert torch.allclose(one.detach(), joint, atol=1e-6) and not torch.allclose(one.detach(), fused.detach())
    from loopgolf.config import ModelConfig
    from loopgolf.model.blocks import SwiGLUMLP
    assert SwiGLUMLP(ModelConfig(dim=8, mlp_hidden=24)).fc.weight.muon_row_blocks == 2
    bad = torch.nn.Parameter(torch.zeros(5, 8))
    bad.muon_row_blocks, bad.grad = 2, torch.ones(5, 8)
    with pytest.raises(ValueError, match="muon_row_blocks=2 does not divide"):
        Muon([bad], lr=0.1, momentum=0.0).step()


def test_newton_schulz_orthogonalizes():
    torch.manual_seed(0)
    g = torch.randn(64, 32)
    x = newton_schulz5(g, steps=5).float()
    assert x.shape == g.shape
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.5  # the quintic iteration lands singular values near 1


def test_muon_step_moves_along_orthogonalized_momentum():
    p = torch.nn.Parameter(torch.zeros(8, 8))
    opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False)
    p.grad = torch.eye(8)
    opt.step()
    assert torch.allclose(p.detach(), -0.1 * newton_schulz5(torch.eye(8), 5).float(), atol=1e-2)


def test_untied_model_gets_head_group_and_embed_lr():
    cfg = get_preset("tiny").override(["model.tie_embeddings=false"])
    opts = build_optimizers(GPT(cfg.model), cfg.optim, cfg.model)
    adam = opts[-1]
    lrs = {g["name"]: g["lr"] for g in adam.param_groups}
    assert lrs["embedding"] == cfg.optim.embed_lr and lrs["head"] == cfg.optim.head_lr


def test_polar_express_and_row_norm_orthogonalize():
    from loopgolf.train.optim import POLAR_EXPRESS_NS
    torch.manual_seed(0)
    g = torch.randn(3, 48, 32)
    x = newton_schulz5(g, steps=5, coeffs=POLAR_EXPRESS_NS).float()
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.5
    p = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False, row_norm=True, coeffs="polar")
    p.grad = torch.randn(16, 8) * torch.logspace(-3, 3, 16)[:, None]  # wildly scaled rows
    opt.step()
    assert torch.isfinite(p).all() and p.abs().max() > 0


def test_lr_floor():
    """The LR floor holds during warm-down (EMA/SWA are tested in tests/train/test_averaging.py)."""
    from loopgolf.config import OptimConfig, TrainConfig
    from loopgolf.train.schedule import Progress, lr_multiplier
    t = TrainConfig(budget_s=100, max_steps=10**9)
    assert lr_multiplier(Progress(0, 99.0, 0.1), OptimConfig(warmdown_frac=0.5, min_lr_frac=0.1), t) == 0.1
    assert lr_multiplier(Progress(0, 99.0, 0.1), OptimConfig(warmdown_frac=0.5), t) == pytest.approx(0.02)


def test_ns_flops_and_the_shard_table():
    from loopgolf.train.optim import ns_flops, shard_matrices
    assert ns_flops(4, 8, 5) == ns_flops(8, 4, 5) == 5 * (4 * 4 * 4 * 8 + 2 * 4 ** 3)
    assert shard_matrices([5, 5, 5, 5], 3) == [0, 1, 2, 0]  # equal costs: round-robin
    assert shard_matrices([1, 9, 1, 1, 4, 4], 2) == [1, 0, 0, 1, 1, 1]  # largest first: 9+1 | 4+4+1+1
    assert shard_matrices([3, 2], 3) == [0, 1]  # fewer matrices than ranks: rank 2 owns none
    assert shard_matrices([7], 1) == [0]


_MUON_WORKER = r'''
import sys
import torch
from loopgolf import dist
from loopgolf.train.optim import Muon

info = dist.init("cpu")
torch.manual_seed(0)
shapes = [(16, 8)] * 5 + [(8, 16)] * 3 + [(3, 12, 4)] + [(32, 32)] * 2 + [(6, 6)]
init = [torch.randn(s) for s in shapes] + [torch.randn(24, 8)]  # the last: SwiGLU-like, 2 row blocks
shapes = shapes + [(24, 8)]
worst = 0.0
for kw in (dict(), dict(row_norm=True, coeffs="polar", nesterov=False)):
    made = []
    for world in (1, info.world_size):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        ps[-1].muon_row_blocks = 2
        groups = [dict(params=ps[:6], weight_decay=0.1), dict(params=ps[6:], lr=0.05)]
        made.append((ps, Muon(groups, lr=0.02, momentum=0.9, rank=info.rank if world > 1 else 0,
                              world=world, **kw)))
    for step in range(3):
        grads = [torch.randn(s) for s in shapes]  # the same on every rank (same seed)
        for ps, opt in made:
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if i == 7 and step == 1 else g.clone()  # a parameter without grad
            opt.step()
    (one, _), (sharded, _) = made
    worst = max([worst] + [(a - b).abs().max().item() for a, b in zip(one, sharded)])
with open(f"{sys.argv[1]}/muon-{info.world_size}-{info.rank}.txt", "w") as f:
    f.write(f"{worst!r}\n")
dist.cleanup()
'''


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_muon_gives_every_rank_the_one_process_update(tmp_path, world):
    """Each rank orthogonalizes its share (3 ranks: uneven shares) and all-gathers the rest: every
    rank ends with the one-process weights, bit for bit on CPU (the same float32 NS per matrix)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "muon.py"
    script.write_text(_MUON_WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={world}", str(script), str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(world):
        assert float((tmp_path / f"muon-{world}-{rank}.txt").read_text()) == 0.0


def test_adamw_kind_is_one_adamw_over_every_parameter():
    """optim.kind=adamw (PR #29 L424-430): one group, every parameter, lr 3e-3, WD 0.1 on all of them;
    the first step is p (1 - lr wd) - lr g / (|g| + eps) (bias-corrected Adam at step 1)."""
    cfg = get_preset("seed-universal-mqa")
    cfg.model.dim, cfg.model.n_heads, cfg.model.mlp_hidden, cfg.model.vocab_size = 32, 4, 48, 64
    model = GPT(cfg.model)
    (opt,) = build_optimizers(model, cfg.optim, cfg.model)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert (g["lr"], g["base_lr"], g["weight_decay"], opt.defaults["betas"]) == (3e-3, 3e-3, 0.1, (0.9, 0.95))
    assert {id(p) for p in g["params"]} == {id(p) for p in model.parameters()}
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    for p, p0 in zip(model.parameters(), before):
        want = p0 * (1 - 3e-3 * 0.1) - 3e-3 * p.grad / (p.grad.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7)
