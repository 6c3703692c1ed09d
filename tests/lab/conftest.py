import pytest


@pytest.fixture
def tiny_args(tiny_shards):
    """--set arguments pointing the tiny preset at the session's tiny shards."""
    d = tiny_shards["dir"]
    return ["--set", f"data.train={d}/*_train_*.bin", "--set", f"data.val={d}/*_val_*.bin",
            "--set", f"data.tokenizer={tiny_shards['tokenizer']}", "--set", "train.device=cpu"]
