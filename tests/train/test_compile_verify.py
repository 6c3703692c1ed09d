"""The compiled-vs-eager gradient check: agreeing gradients pass (eager in chunks = the whole
micro-batch), a wrong "compiled" model is refused with the fix in the message, and parameters
with no gradient on either side count as agreeing."""
from contextlib import nullcontext

import pytest
import torch

from loopgolf.config import ModelConfig
from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.compile_verify import CompileMismatch, check_gradients, check_trainer_graph
from loopgolf.train.loop import Trainer


def _model():
    torch.manual_seed(0)
    m = GPT(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=64, vocab_size=64, plan="2"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # as after a few steps: projections no longer zero
    return m


def _batch(n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (n, 16), generator=g)
    return x, torch.roll(x, -1, 1)


class Scaled(torch.nn.Module):
    """A stand-in for a miscompiled model: the right graph, every gradient times `k`."""

    def __init__(self, inner, k):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x, y, stage=-1):
        return self.inner(x, y, stage=stage) * self.k


def test_the_same_model_in_chunks_agrees_and_grads_are_left_cleared():
    m = _model()
    x, y = _batch()
    check = check_gradients(m, m, x, y, -1, nullcontext(), eager_chunk=4)  # 4 + 2 sequences vs 6
    assert check.ok and check.worst[0][1] < 1e-4
    assert all(p.grad is None for p in m.parameters())  # autograd.grad: nothing accumulated
    assert check.summary()["ok"] is True


def test_a_wrong_gradient_fails_and_zero_gradients_agree():
    m = _model()
    x, y = _batch()
    bad = check_gradients(m, Scaled(m, 3.0), x, y, -1, nullcontext())
    assert not bad.ok and abs(bad.worst[0][1] - 2.0) < 1e-3  # |3g - g| / |g|
    fresh = GPT(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=64, vocab_size=64, plan="2"))
    zero = check_gradients(fresh, fresh, x, y, -1, nullcontext())  # zero-init projections: many zero grads
    assert zero.ok


def test_trainer_refuses_a_miscompiled_graph_with_the_fix(tiny_shards):
    cfg = get_preset("tiny").override(["train.max_steps=2"])
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loader = BatchLoader(TokenStream(tiny_shards["train"]), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, 0, 1, torch.device("cpu"))
    tr = Trainer(cfg, model, loader, torch.device("cpu"), Logger(None, echo=False))
    assert check_trainer_graph(tr).ok  # on CPU the "compiled" model is the model itself
    tr.model = Scaled(model, -1.0)  # gradients of the wrong sign: relative error 2
    with pytest.raises(CompileMismatch, match="train.compile=false"):
        check_trainer_graph(tr)


def test_noise_on_a_zero_gradient_is_not_a_mismatch_but_a_real_error_is():
    """At init the zero-initialized output projections leave c_q with an exactly zero eager gradient.
    Rounding-sized noise there is measured against FLOOR x c_q's share of the total norm and passes;
    an error as large as a real gradient fails, naming the parameter."""
    fresh = GPT(ModelConfig(dim=32, n_heads=4, n_kv_heads=2, mlp_hidden=64, vocab_size=64, plan="2"))
    x, y = _batch()
    name = "blocks.0.attn.c_q.weight"

    class Noisy(torch.nn.Module):
        def __init__(self, inner, size):
            super().__init__()
            self.inner, self.p, self.size = inner, dict(inner.named_parameters())[name], size

        def forward(self, x, y, stage=-1):
            return self.inner(x, y, stage=stage) + self.p.sum() * self.size

    assert check_gradients(fresh, fresh, x, y, -1, nullcontext()).worst[0][1] == 0.0
    assert check_gradients(fresh, Noisy(fresh, 1e-12), x, y, -1, nullcontext()).ok
    big = check_gradients(fresh, Noisy(fresh, 1e-2), x, y, -1, nullcontext())
    assert not big.ok and big.worst[0][0] == name


def test_a_rank_without_sequences_skips_the_check(tiny_shards):
    cfg = get_preset("tiny")
    loader = BatchLoader(TokenStream(tiny_shards["train"]), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, 0, 1, torch.device("cpu"))
    tr = Trainer(cfg, GPT(cfg.model), loader, torch.device("cpu"), Logger(None, echo=False))
    tr.loader.next_step = lambda: []
    assert check_trainer_graph(tr).ok and check_trainer_graph(tr).worst == []
