"""The token stream wraps around its shards in order, and a step's sequences are the same for any
world size and micro-batch split (so resuming and scaling out change nothing)."""
import numpy as np
import pytest
import torch

from loopgolf.data.loader import BatchLoader, TokenStream, rank_slice
from loopgolf.data.shards import write_shard


@pytest.fixture
def two_shards(tmp_path):
    a, b = np.arange(0, 10, dtype=np.uint16), np.arange(100, 107, dtype=np.uint16)
    pa, pb = tmp_path / "s_train_000000.bin", tmp_path / "s_train_000001.bin"
    write_shard(pa, a)
    write_shard(pb, b)
    return [pa, pb], np.concatenate([a, b]).astype(np.int64)


def test_stream_reads_across_shards_and_wraps(two_shards):
    paths, tokens = two_shards
    s = TokenStream(paths)
    assert s.total == 17
    got = np.concatenate([s.take(6), s.take(6), s.take(10)])
    np.testing.assert_array_equal(got, np.concatenate([tokens, tokens[:5]]))
    assert s.position == 22


def test_stream_refuses_empty_input():
    with pytest.raises(ValueError, match="at least one shard"):
        TokenStream([])


def test_rank_slices_partition_the_sequences():
    for n in (1, 5, 8, 13):
        for world in (1, 2, 3, 8):
            cuts = [rank_slice(n, r, world) for r in range(world)]
            assert cuts[0][0] == 0 and cuts[-1][1] == n
            assert all(cuts[i][1] == cuts[i + 1][0] for i in range(world - 1))


@pytest.mark.parametrize("world,micro", [(1, 4), (2, 1), (3, 2)])
def test_a_step_is_the_same_data_for_any_split(two_shards, world, micro):
    paths, tokens = two_shards
    seq, batch_tokens = 2, 6  # 3 sequences per step, 7 tokens read (targets overlap by one)
    x_parts, y_parts = [], []
    for rank in range(world):
        loader = BatchLoader(TokenStream(paths), seq, batch_tokens, micro, rank, world, torch.device("cpu"))
        for x, y in loader.next_step():
            assert x.size(0) <= micro
            x_parts.append(x)
            y_parts.append(y)
    x, y = torch.cat(x_parts), torch.cat(y_parts)
    np.testing.assert_array_equal(x.flatten().numpy(), tokens[:6])
    np.testing.assert_array_equal(y.flatten().numpy(), tokens[1:7])


def test_set_seq_len_keeps_the_step_and_micro_batch_tokens(two_shards):
    paths, tokens = two_shards
    loader = BatchLoader(TokenStream(paths), 4, 8, 1, 0, 1, torch.device("cpu"))  # 2 rows of 4, 4 per micro
    first = loader.next_step()
    assert [tuple(x.shape) for x, _ in first] == [(1, 4), (1, 4)]
    loader.set_seq_len(2)  # same 8 tokens: 4 rows of 2, micro-batches of 2 rows (still 4 tokens)
    second = loader.next_step()
    assert [tuple(x.shape) for x, _ in second] == [(2, 2), (2, 2)]
    np.testing.assert_array_equal(torch.cat([x.flatten() for x, _ in second]).numpy(), tokens[9:17])
    np.testing.assert_array_equal(torch.cat([y.flatten() for _, y in second]).numpy(), np.r_[tokens[10:17], tokens[0]])
    with pytest.raises(ValueError, match="row length 3 must divide"):
        loader.set_seq_len(3)


def _step(loader):
    xs, ys = zip(*loader.next_step())
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def test_random_windows_are_the_seeded_draws_with_targets_shifted_by_one(two_shards):
    """data.sampling=random_windows (PR #29's loader): step k's rows start at
    default_rng([seed, k]).integers(0, total - T - 1, rows), read across shards; y is x shifted by one."""
    from loopgolf.data.loader import RandomWindows, token_stream

    paths, tokens = two_shards
    stream = token_stream(paths, "random_windows", seed=7)
    assert isinstance(stream, RandomWindows)
    loader = BatchLoader(stream, 3, 12, 4, 0, 1, torch.device("cpu"))  # 4 rows of 3 per step
    for k in range(3):
        starts = np.random.default_rng([7, k]).integers(0, 17 - 3 - 1, 4)
        x, y = _step(loader)
        np.testing.assert_array_equal(x, np.stack([tokens[s:s + 3] for s in starts]))
        np.testing.assert_array_equal(y, np.stack([tokens[s + 1:s + 4] for s in starts]))
    assert stream.position == 3  # steps drawn: the checkpointed position
    assert not np.array_equal(_step(BatchLoader(token_stream(paths, "random_windows", 8), 3, 12, 4, 0, 1,
                                                torch.device("cpu")))[0], _step(BatchLoader(
        token_stream(paths, "random_windows", 7), 3, 12, 4, 0, 1, torch.device("cpu")))[0])


@pytest.mark.parametrize("world,micro", [(2, 1), (3, 2)])
def test_random_windows_are_the_same_for_any_split_and_after_a_resume(two_shards, world, micro):
    from loopgolf.data.loader import RandomWindows

    paths, _ = two_shards
    one = BatchLoader(RandomWindows(paths, 3), 2, 12, 6, 0, 1, torch.device("cpu"))
    want = [_step(one) for _ in range(2)]
    for step in range(2):
        parts = []
        for rank in range(world):
            stream = RandomWindows(paths, 3)
            stream.position = step  # as Trainer.resume restores it
            parts.append(_step(BatchLoader(stream, 2, 12, micro, rank, world, torch.device("cpu"))))
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), want[step][0])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), want[step][1])


def test_random_windows_need_one_row_and_its_target(tmp_path):
    from loopgolf.data.loader import RandomWindows

    path = tmp_path / "s_train_000000.bin"
    write_shard(path, np.arange(5, dtype=np.uint16))
    loader = BatchLoader(RandomWindows([path], 0), 8, 8, 1, 0, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="random windows of 9 need at least 10"):
        loader.next_step()
