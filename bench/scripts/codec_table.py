"""Artifact bytes per codec for a preset's tensor shapes, on synthetic Gaussian weights (CPU).

The GPU run of issue 4 packed with zstd only (its fitter's trials need a fast codec); this table says
how the other codecs compare on the same grids. Every 2-D weight is drawn from N(0, 1/fan_in) (the
trained matrices are near-Gaussian per row; their tails are heavier, so real sizes differ), then
quantized with the run's rules and SDClip k, and packed once per codec, with and without shuffle.

    python bench/scripts/codec_table.py --preset seed-loop45 --k 5.453 \
        --bits-rules '^blocks=6,^(tok_emb|bigram)=8'
"""
import argparse
import dataclasses
import json
import time

import torch

from loopgolf.compress.artifact import pack_quantized
from loopgolf.compress.quant import dtype_name
from loopgolf.compress.rules import quantize_state
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", required=True)
    p.add_argument("--k", type=float, required=True)
    p.add_argument("--bits-rules", required=True)
    p.add_argument("--json")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = get_preset(a.preset)
    state = GPT(cfg.model).state_dict()
    for name, t in state.items():
        if t.ndim == 2 and t.is_floating_point():
            t.normal_(0.0, t.size(1) ** -0.5)
    q = dataclasses.replace(cfg.quant, scheme="int6_row", row_scale_min=0.0, clip="sdclip", sdclip_k=a.k,
                            bits_rules=a.bits_rules)
    quantized = quantize_state(state, q)
    shapes = {n: (tuple(t.shape), dtype_name(t.dtype)) for n, t in state.items()}
    rows = []
    for codec in ("zlib", "zstd", "lzma", "brotli", "best"):
        for shuffle in (False, True):
            if codec == "best" and not shuffle:
                continue
            t0 = time.perf_counter()
            n = len(pack_quantized(quantized, shapes, {}, dataclasses.replace(q, codec=codec, shuffle=shuffle)))
            rows.append({"codec": codec, "shuffle": shuffle, "bytes": n, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{a.preset} k={a.k} {codec:>6} shuffle={shuffle!s:5} {n:>12,} B {rows[-1]['seconds']:>6} s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"preset": a.preset, "sdclip_k": a.k, "bits_rules": a.bits_rules, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
