"""Short training ablations of one preset, one variant after another in this process (GPU or CPU).

Used to find why `seed-shared-3x4` diverges on the GPU (issue 3): each variant is the preset plus
`--set`-style overrides, trained for a fixed number of steps with the real trainer (same optimizer,
schedules, bf16 autocast, optional torch.compile). Prints the loss every few steps and, at the end,
the RMS of every parameter group, and writes all traces as JSON.

    python bench/scripts/ablate.py --preset seed-shared-3x4 --train '/root/stage/shards/*_train_*.bin' \
        --steps 60 --out ablate.json \
        --variant 'asis:' --variant 'no_ve:model.value_embeds=0' --variant 'lr_half:optim.matrix_lr=0.009'
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from loopgolf import dist
from loopgolf.data.loader import BatchLoader, TokenStream
from loopgolf.data.shards import list_shards
from loopgolf.metrics import Logger
from loopgolf.model.gpt import GPT
from loopgolf.presets import get_preset
from loopgolf.train.loop import Trainer, TrainingDiverged


def run_variant(preset: str, sets: list[str], args) -> dict:
    cfg = get_preset(preset).override(
        [f"data.train={args.train}", f"train.max_steps={args.steps}", "train.budget_s=0",
         f"train.log_every={args.log_every}", "optim.warmdown_frac=0", "optim.swa_start_frac=0",
         "optim.ema_horizon_frac=0", f"train.compile={args.compile}", "train.warmup_steps=2",
         *args.common, *sets])
    cfg.validate()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dist.init(device.type)
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    loader = BatchLoader(TokenStream(list_shards(cfg.data.train)), cfg.data.seq_len, cfg.train.batch_tokens,
                         cfg.train.micro_batch_seqs, 0, 1, device)
    with tempfile.TemporaryDirectory() as tmp:
        logger = Logger(Path(tmp), echo=False)
        trainer = Trainer(cfg, model, loader, device, logger)
        trainer.warmup()
        t0 = time.perf_counter()
        err = None
        try:
            trainer.run()
        except TrainingDiverged as e:
            err = str(e)
        logger.close()
        events = [json.loads(line) for line in open(Path(tmp) / "metrics.jsonl")]
    losses = {e["step"]: e["loss"] for e in events if e["event"] == "train"}
    rms = {}
    for name, p in model.named_parameters():
        key = name.split(".weight")[0]
        key = ".".join(k for k in key.split(".") if not k.isdigit())
        rms.setdefault(key, []).append(p.detach().float().pow(2).mean().sqrt().item())
    return {"sets": sets, "losses": losses, "error": err, "seconds": round(time.perf_counter() - t0, 1),
            "plan": model.plan.spec, "param_rms": {k: round(max(v), 5) for k, v in sorted(rms.items())}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--train", required=True, help="glob of training shards")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--compile", default="false")
    p.add_argument("--common", action="append", default=[], help="override applied to every variant")
    p.add_argument("--variant", action="append", required=True, help="name:set1,set2,... (may be empty)")
    p.add_argument("--out", required=True)
    p.add_argument("--sdpa-pad", type=int, default=None, help="set model.blocks.SDPA_PAD_MULTIPLE (0 = off)")
    args = p.parse_args(argv)
    if args.sdpa_pad is not None:
        from loopgolf.model import blocks
        blocks.SDPA_PAD_MULTIPLE = args.sdpa_pad
    results = {}
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        res = run_variant(args.preset, [s for s in sets.split(",") if s], args)
        results[name] = res
        trace = " ".join(f"{k}:{v:.2f}" for k, v in sorted(res["losses"].items()))
        print(f"{name:>14} {res['seconds']:>6}s {trace} {res['error'] or ''}", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
