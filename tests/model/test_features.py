import pytest
import torch

from loopgolf.config import ConfigError, ModelConfig
from loopgolf.data.tokenizer import BOS_ID
from loopgolf.model.features import BigramHash, InputSmearGate, SmearGate
from loopgolf.model.gpt import GPT


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=48), **kw})


def test_smear_gate_never_mixes_across_a_document_start():
    gate = SmearGate(4, init=0.0)
    x = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    idx = torch.tensor([[5, BOS_ID, 7]])
    out = gate(x, idx)
    assert torch.equal(out[0, 0], 0.5 * x[0, 0])  # the first position mixes with zeros
    assert torch.equal(out[0, 1], x[0, 1])  # the BOS position is untouched
    assert torch.allclose(out[0, 2], 0.5 * x[0, 2] + 0.5 * x[0, 1])


def test_smear_gate_starts_mostly_transparent():
    gate = SmearGate(4)
    assert torch.allclose(torch.sigmoid(gate.gate), torch.full((4,), 0.0474), atol=1e-4)


def test_bigram_hash_bucket_formula():
    bh = BigramHash(101, 8, 16)
    idx = torch.tensor([[3, 7, 9]])
    h = bh.bucket(idx)
    assert h.tolist() == [[100, (36313 * 7 ^ 27191 * 3) % 100, (36313 * 9 ^ 27191 * 7) % 100]]
    assert torch.count_nonzero(bh(idx)) == 0  # zero-init projection: transparent at start
    x = torch.randn(1, 3, 16)
    assert torch.equal(bh.add(x, idx), x)


def test_input_tricks_exist_only_when_their_field_is_on():
    plain = GPT(_cfg(plan="2"))
    assert not hasattr(plain, "bigram") and not hasattr(plain, "smear")
    on = GPT(_cfg(plan="2", bigram_buckets=16, bigram_dim=8, smear_gate=True))
    names = {n for n, _ in on.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert names == {"bigram.table.weight", "bigram.proj.weight", "bigram.scale", "smear.gate"}


def test_smear_gate_in_the_model_keeps_documents_apart():
    """Changing the token just before a BOS must not change the logits at or after the BOS when the
    only cross-position path before attention would be the smear (a 0-layer-free check: plan 1,
    attention blocked by zeroing its projection)."""
    torch.manual_seed(0)
    model = GPT(_cfg(plan="1", smear_gate=True, unet_skips=False))
    torch.nn.init.normal_(model.blocks[0].mlp.proj.weight, std=0.1)
    with torch.no_grad():
        model.smear.gate.fill_(2.0)
    a = torch.tensor([[5, 6, BOS_ID, 7]])
    b = torch.tensor([[5, 9, BOS_ID, 7]])
    la, lb = model.logits(a), model.logits(b)
    assert torch.allclose(la[0, 2], lb[0, 2]) and not torch.allclose(la[0, 1], lb[0, 1])


def test_input_smear_gate_adds_the_gated_previous_token_except_at_bos():
    cfg = _cfg(smear_window=2)
    gate = InputSmearGate(cfg, None)
    assert gate.weight.shape == (1, 2) and not gate.weight.any() and not gate.lam.any()
    x = torch.randn(1, 4, 32)
    idx = torch.tensor([[5, 6, BOS_ID, 7]])
    assert torch.equal(gate(x, idx), x)  # lam = 0: transparent at initialization
    with torch.no_grad():
        gate.lam.fill_(2.0)
        gate.weight.copy_(torch.tensor([[1.0, -1.0]]))
    g = 2.0 * torch.sigmoid(x[0, :, 0] - x[0, :, 1])  # lam * sigmoid(W . x_t[:2]), from the token itself
    out = gate(x, idx)[0]
    assert torch.equal(out[0], x[0, 0])  # the first position has no previous token
    assert torch.allclose(out[1], x[0, 1] + g[1] * x[0, 0], atol=1e-6)
    assert torch.equal(out[2], x[0, 2])  # BOS: the previous document does not leak in (#1855's fix)
    assert torch.allclose(out[3], x[0, 3] + g[3] * x[0, 2], atol=1e-6)


def test_input_smear_gate_is_its_own_trick_beside_the_static_one():
    model = GPT(_cfg(plan="2", smear_window=12))
    assert isinstance(model.smear_in, InputSmearGate) and not hasattr(model, "smear")
    assert {n for n, _ in model.named_parameters() if n.startswith("smear_in")} == {"smear_in.weight",
                                                                                    "smear_in.lam"}
    with pytest.raises(ConfigError, match="two SmearGates"):
        _cfg(smear_gate=True, smear_window=12).validate()


def test_bigram_hash_mul_is_pr_927s_formula():
    """(92821 t_prev + t) mod B with t_prev = 0 at position 0; 92821 = 2 (mod 101), so the buckets of
    3, 7, 9 are 3, 2*3 + 7, 2*7 + 9."""
    bh = BigramHash(101, 8, 16, hash_="mul", scale=0.0, table_std=0.01)
    assert bh.bucket(torch.tensor([[3, 7, 9]])).tolist() == [[3, 13, 23]]
    assert bh.bucket(torch.tensor([[100, 100]])).tolist() == [[100, (100 * 92821 + 100) % 101]]
    assert not hasattr(bh, "scale") and {n for n, _ in bh.named_parameters()} == {"table.weight", "proj.weight"}
    with torch.no_grad():
        bh.proj.weight.normal_()
    idx = torch.tensor([[3, 7]])
    assert torch.allclose(bh(idx), bh.proj(bh.table(bh.bucket(idx))))  # no scale factor


def test_bigram_inits_zero_table_and_orthogonal_projection():
    torch.manual_seed(0)
    bh = BigramHash(64, 16, 32, table_std=0.0, proj_gain=1.0)
    assert not bh.table.weight.any()
    w = bh.proj.weight  # (32, 16): orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(16), atol=1e-5)
    assert abs(BigramHash(4096, 64, 32, table_std=0.01).table.weight.std().item() - 0.01) < 5e-4


def test_pr927_smear_gate_runs_after_the_norm_without_bos_mask():
    cfg = _cfg(plan="1", smear_gate=True, smear_init=0.0, smear_after_norm=True, unet_skips=False)
    model = GPT(cfg)
    assert model._stream == () and len(model._normed) == 1
    assert bool((model.smear.gate == 0).all())
    x = torch.randn(1, 3, 32)
    idx = torch.tensor([[5, BOS_ID, 7]])
    out = model._normed[0](x, idx)
    assert torch.allclose(out[0, 0], 0.5 * x[0, 0])  # gate 0: s = 1/2, x_{-1} = 0
    assert torch.allclose(out[0, 1], 0.5 * x[0, 1] + 0.5 * x[0, 0])  # BOS mixes too (no mask)
    assert torch.allclose(out[0, 2], 0.5 * x[0, 2] + 0.5 * x[0, 1])


def test_pr927_smear_changes_the_bos_logits_the_default_form_does_not():
    torch.manual_seed(0)
    model = GPT(_cfg(plan="1", smear_gate=True, smear_after_norm=True, unet_skips=False))
    torch.nn.init.normal_(model.blocks[0].mlp.proj.weight, std=0.1)
    a, b = torch.tensor([[5, 6, BOS_ID, 7]]), torch.tensor([[5, 9, BOS_ID, 7]])
    assert not torch.allclose(model.logits(a)[0, 2], model.logits(b)[0, 2])
