"""Fixtures for the evaluator tests: a small random GPT and the tiny validation stream."""
import numpy as np
import pytest
import torch

from loopgolf.config import ModelConfig
from loopgolf.data.luts import build_byte_luts
from loopgolf.data.shards import load_shard
from loopgolf.data.tokenizer import load_tokenizer
from loopgolf.data.valset import load_val_set
from loopgolf.model.gpt import GPT


def _small_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(ModelConfig(vocab_size=512, dim=32, n_heads=2, n_kv_heads=1, mlp_hidden=64, plan="2"))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


@pytest.fixture
def small_model():
    """small_model(seed=0) -> a dim-32 GPT (vocab 512) with nonzero random weights."""
    return _small_model


@pytest.fixture(scope="session")
def val(tiny_shards):
    """(uint16 val tokens, byte tables on CPU) of the tiny shards."""
    sp = load_tokenizer(tiny_shards["tokenizer"])
    return np.asarray(load_shard(tiny_shards["val"][0])), build_byte_luts(sp, 512).to_torch("cpu")


@pytest.fixture(scope="session")
def vs(tiny_shards):
    """The tiny shards' validation set (ValSet: tokens and per-target bytes from the tables)."""
    return load_val_set(str(tiny_shards["dir"] / "*_val_*.bin"), tiny_shards["tokenizer"], 512)


@pytest.fixture
def flush_denormals():
    """Tiny random CPU models produce denormal floats, which x86 handles ~100x slower."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
