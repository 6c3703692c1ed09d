"""Token stream over shards and the per-step batch split that keeps the global batch fixed.

Shards are read sequentially in sorted order and wrap around, like the baseline (techniques.md 2.3).
Each optimizer step consumes one contiguous chunk of batch_tokens + 1 tokens, cut into
batch_tokens / seq_len sequences; rank r of W takes sequences [r*S//W, (r+1)*S//W). The data a
step sees is therefore identical for every world size (1, 2, 3, 8, 16, ...), and the position is a
single integer, which makes resuming exact. `set_seq_len` changes the row length mid-run (a growing
training context, train.seq_len_schedule) while a step keeps its batch_tokens and a micro-batch its
tokens (micro_batch_seqs x the starting row length), so the memory per forward stays the same.

data.sampling=random_windows (`RandomWindows`, PR #29's loader, L288-295): every step's rows start at
positions drawn uniformly, with replacement, from the whole shard list instead. The draw of step k
comes from a generator seeded with (train.seed, k), and `position` counts the steps drawn, so the
data stays independent of the world size and a resume is still exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from loopgolf.data.shards import load_shard, read_header


class TokenStream:
    def __init__(self, paths: list[Path]):
        if not paths:
            raise ValueError("TokenStream needs at least one shard")
        self.paths = list(paths)
        self.lengths = [read_header(p) for p in self.paths]
        self.total = sum(self.lengths)
        if self.total < 2:
            raise ValueError(f"shards {self.paths[0]}... hold {self.total} tokens; need at least 2")
        self.offsets = np.cumsum([0] + self.lengths)
        self.position = 0  # global token offset of the next token to read
        self._cache: dict[int, np.ndarray] = {}

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache.clear()  # keep at most one memory map open
            self._cache[i] = load_shard(self.paths[i])
        return self._cache[i]

    def read(self, pos: int, n: int) -> np.ndarray:
        """n tokens from global offset `pos` (wrapping around the shard list) as int64."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            at = (pos + filled) % self.total
            i = int(np.searchsorted(self.offsets, at, side="right") - 1)
            start = at - int(self.offsets[i])
            k = min(n - filled, self.lengths[i] - start)
            out[filled:filled + k] = self._shard(i)[start:start + k]
            filled += k
        return out

    def take(self, n: int) -> np.ndarray:
        """The next n tokens (wrapping around the shard list) as int64."""
        out = self.read(self.position, n)
        self.position += n
        return out

    def rows(self, n_rows: int, row_tokens: int) -> np.ndarray:
        """A step's tokens for n_rows rows of row_tokens - 1 inputs: the next n_rows * (row_tokens - 1)
        + 1 tokens as one flat chunk (a row's last target is the next row's first input)."""
        return self.take(n_rows * (row_tokens - 1) + 1)


class RandomWindows(TokenStream):
    """Rows at random starts (data.sampling=random_windows; module docstring). PR #29 draws
    torch.randint(0, len(tokens) - seq_len - 1, (n_seqs,)) per step and reads x = t[s:s+T],
    y = t[s+1:s+T+1]: the same distribution here, from numpy's generator seeded with (seed, step),
    so the windows are not the PR's own (its draws follow its model init's use of torch's RNG)."""

    def __init__(self, paths: list[Path], seed: int):
        super().__init__(paths)
        self.seed = seed

    def rows(self, n_rows: int, row_tokens: int) -> np.ndarray:
        if self.total < row_tokens + 1:
            raise ValueError(f"shards {self.paths[0]}... hold {self.total} tokens; random windows of "
                             f"{row_tokens} need at least {row_tokens + 1}")
        rng = np.random.default_rng([self.seed, self.position])
        starts = rng.integers(0, self.total - row_tokens, n_rows)
        self.position += 1
        return np.stack([self.read(int(st), row_tokens) for st in starts])


def token_stream(paths: list[Path], sampling: str, seed: int) -> TokenStream:
    """The training stream data.sampling asks for."""
    return RandomWindows(paths, seed) if sampling == "random_windows" else TokenStream(paths)


def rank_slice(n_items: int, rank: int, world: int) -> tuple[int, int]:
    return n_items * rank // world, n_items * (rank + 1) // world


class BatchLoader:
    """Yields, per optimizer step, this rank's micro-batches (x, y) already on the device."""

    def __init__(self, stream: TokenStream, seq_len: int, batch_tokens: int, micro_batch_seqs: int,
                 rank: int, world: int, device: torch.device):
        self.stream = stream
        self.batch_tokens = batch_tokens
        self.micro_tokens = micro_batch_seqs * seq_len
        self.rank, self.world = rank, world
        self.device = device
        self.set_seq_len(seq_len)

    def set_seq_len(self, seq_len: int) -> None:
        """Rows of `seq_len` tokens from the next step on: batch_tokens / seq_len sequences per step,
        micro_tokens / seq_len per micro-batch (ValueError unless both divide)."""
        if seq_len < 1 or self.batch_tokens % seq_len or self.micro_tokens % seq_len:
            raise ValueError(f"row length {seq_len} must divide the step's {self.batch_tokens} tokens and "
                             f"the micro-batch's {self.micro_tokens}")
        self.seq_len, self.n_seqs = seq_len, self.batch_tokens // seq_len
        self.micro = self.micro_tokens // seq_len
        self.lo, self.hi = rank_slice(self.n_seqs, self.rank, self.world)

    def set_micro_tokens(self, n: int) -> None:
        """Micro-batches of `n` tokens from the next step on (the step's tokens stay;
        train/micro_fit.py halves them after an out-of-memory error)."""
        self.micro_tokens = n
        self.set_seq_len(self.seq_len)

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        T = self.seq_len
        got = self.stream.rows(self.n_seqs, T + 1)
        # sequential: one flat chunk whose rows share their boundary token; random: (rows, T + 1)
        mine = torch.from_numpy(got[self.lo * T:self.hi * T + 1] if got.ndim == 1 else got[self.lo:self.hi])
        if self.device.type == "cuda":
            # one host->device copy per step, asynchronous and without a host sync: pin_memory() takes
            # a block from torch's caching host allocator, which does not hand the block out again
            # until the copy that reads it has finished (the profile found the explicit stream
            # synchronize this replaces: bench/results/2026-12-01_profile_h200)
            mine = mine.pin_memory().to(self.device, non_blocking=True)
        if mine.ndim == 1:
            x_all, y_all = mine[:-1].view(-1, T), mine[1:].view(-1, T)
        else:
            x_all, y_all = mine[:, :-1].contiguous(), mine[:, 1:].contiguous()
        return [(x_all[i:i + self.micro], y_all[i:i + self.micro])
                for i in range(0, x_all.size(0), self.micro)]
