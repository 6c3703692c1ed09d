"""Exact validation bits per byte: val_bpb = sum(nats) / (ln 2 * sum(bytes)), float64, all ranks.

Windows are the baseline's non-overlapping seq_len windows over the validation stream truncated
to ((N-1)//T)*T + 1 tokens (techniques.md 2.4); every target counts, BOS targets included (they add
loss and 0 bytes). Bytes per target come from data/luts.py, the one owner of byte counting, or,
for text-transformed data, from a byte sidecar (data/transform.py): original bytes per token.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import numpy as np
import torch

from loopgolf import dist
from loopgolf.data.loader import rank_slice


def usable_tokens(n: int, seq_len: int, max_tokens: int = 0) -> int:
    if max_tokens > 0:
        n = min(n, max_tokens + 1)
    usable = ((n - 1) // seq_len) * seq_len + 1
    if usable < seq_len + 1:
        raise ValueError(f"validation set has {n} tokens; need at least seq_len+1 = {seq_len + 1}")
    return usable


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, tokens: np.ndarray, luts, seq_len: int, batch_seqs: int,
                 device: torch.device, max_tokens: int = 0, autocast: bool = True,
                 byte_sidecar: np.ndarray | None = None) -> dict:
    """Score `tokens` (uint16 stream) with `model(x, y) -> per-token nats`; luts: ByteLUTs.to_torch.

    byte_sidecar, aligned with tokens, gives each token's original byte count; when set, a
    target's bytes are byte_sidecar[its position] instead of the tables' count.
    """
    t0 = time.perf_counter()
    if byte_sidecar is not None and len(byte_sidecar) != len(tokens):
        raise ValueError(f"byte_sidecar has {len(byte_sidecar)} entries for {len(tokens)} tokens; "
                         "load the sidecar of the same shards (data.transform.load_byte_sidecar)")
    n = usable_tokens(len(tokens), seq_len, max_tokens)
    n_windows = (n - 1) // seq_len
    info = dist.info()
    lo, hi = rank_slice(n_windows, info.rank, info.world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, bytes, tokens
    was_training = model.training
    model.eval()
    amp = (torch.autocast("cuda", dtype=torch.bfloat16)
           if autocast and device.type == "cuda" else nullcontext())
    for w in range(lo, hi, batch_seqs):
        w_end = min(hi, w + batch_seqs)
        chunk = torch.from_numpy(tokens[w * seq_len:w_end * seq_len + 1].astype(np.int64)).to(device)
        x = chunk[:-1].view(-1, seq_len)
        y = chunk[1:].view(-1, seq_len)
        with amp:
            nats = model(x, y)
        sums[0] += nats.double().sum()
        if byte_sidecar is None:
            sums[1] += luts.count(x, y).double().sum()
        else:
            sums[1] += float(byte_sidecar[w * seq_len + 1:w_end * seq_len + 1].sum(dtype=np.int64))
        sums[2] += y.numel()
    model.train(was_training)
    dist.all_reduce_sum(sums)
    nats, n_bytes, n_tok = (float(v) for v in sums.tolist())
    val_loss = nats / n_tok
    return {
        "val_loss": val_loss,
        "val_bpb": nats / (math.log(2) * n_bytes),
        "val_tokens": int(n_tok),
        "val_bytes": int(n_bytes),
        "eval_seconds": time.perf_counter() - t0,
    }
