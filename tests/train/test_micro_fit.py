"""An out-of-memory error in the first warm-up step halves the micro-batch (kept a multiple of every
row length) and retries; the run then trains exactly as if configured with the smaller micro-batch.
Several processes, or nothing left to halve, stop with the fix named."""
import pytest
import torch

from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.loop import Trainer
from loopgolf.train.micro_fit import MicroBatchTooLarge, step_fitting_memory


def _loader(tiny_shards, seq=32, micro=8):
    return BatchLoader(TokenStream(tiny_shards["train"]), seq, 1024, micro, 0, 1, torch.device("cpu"))


def _oom_above(loader, limit, calls):
    def step():
        calls.append(loader.micro)
        if loader.micro > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return torch.tensor(1.0)
    return step


def test_halves_until_the_step_fits(tiny_shards):
    loader, calls, halved, cleared = _loader(tiny_shards), [], [], []
    out = step_fitting_memory(_oom_above(loader, 2, calls), loader, 1, on_halve=lambda a, b: halved.append((a, b)),
                              clear=lambda: cleared.append(1))
    assert out.item() == 1.0 and calls == [8, 4, 2] and halved == [(8, 4), (4, 2)] and len(cleared) == 2
    assert loader.micro == 2 and loader.micro_tokens == 64 and loader.n_seqs == 32  # the step's tokens stay


def test_halving_keeps_a_multiple_of_every_row_length(tiny_shards):
    loader = BatchLoader(TokenStream(tiny_shards["train"]), 8, 768, 24, 0, 1, torch.device("cpu"))  # 192 tokens
    step_fitting_memory(_oom_above(loader, 23, []), loader, 1, row_lengths=(8, 16, 64))
    assert loader.micro_tokens == 64 and loader.micro == 8  # half of 192 = 96 -> the multiple of 64 below it
    for length in (16, 64):
        loader.set_seq_len(length)  # every later row length still divides the micro-batch


def test_several_processes_or_one_sequence_stop_with_the_fix(tiny_shards):
    loader = _loader(tiny_shards)
    with pytest.raises(MicroBatchTooLarge, match=r"micro_batch_seqs=8 on 2 process.*micro_batch_seqs=4"):
        step_fitting_memory(_oom_above(loader, 2, []), loader, 2)
    assert loader.micro == 8  # nothing changed
    with pytest.raises(MicroBatchTooLarge, match="micro_batch_seqs=1 on 1 process"):
        step_fitting_memory(_oom_above(loader, 0, []), loader, 1)


def _trainer(tiny_shards, tmp_path, micro):
    cfg = get_preset("tiny").override(["train.max_steps=4", f"train.micro_batch_seqs={micro}", "train.warmup_steps=2",
                                       "train.compile_check=false"])
    torch.manual_seed(cfg.train.seed)
    loader = BatchLoader(TokenStream(tiny_shards["train"]), cfg.data.seq_len, cfg.train.batch_tokens, micro, 0, 1,
                         torch.device("cpu"))
    tr = Trainer(cfg, GPT(cfg.model), loader, torch.device("cpu"), Logger(None, echo=False))
    real = tr.raw_model

    def model(x, y, stage=-1):  # stands in for a compiled model on a card that holds 4 sequences
        if x.size(0) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(x, y, stage=stage)
    tr.model = model  # not the raw model: the warm-up runs
    return tr


def test_trainer_warmup_falls_back_and_trains_as_the_smaller_micro_batch(tiny_shards, tmp_path):
    fell, fits = _trainer(tiny_shards, tmp_path, 16), _trainer(tiny_shards, tmp_path, 4)
    fell.warmup()
    fits.warmup()
    assert fell.loader.micro == 4 and fell.compile_stats["micro_batch_seqs"] == 4
    assert "micro_batch_seqs" not in fits.compile_stats
    a, b = fell.run(), fits.run()
    assert a["steps"] == b["steps"] == 4
    for p, q in zip(fell.raw_model.parameters(), fits.raw_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # same micro-batches, same order: bit-identical
