"""Two optimizer steps of every preset on CPU from name-keyed weights: the losses a refactor must keep.

Weights do not depend on the order in which modules are built: every `*.weight` and every other
parameter whose init is not a constant is replaced by N(0, 1) * 1.5 / sqrt(last dim) from a generator
seeded by the CRC32 of its name; constant inits of other tensors (scales, gains, mixes) are kept. The batch is 2 x 64 random
tokens. Losses are taken for each plan stage before the update (stage losses) and, for the final plan,
before and after one step of the preset's optimizers at their base learning rates.

`python tests/golden/make_golden.py` rewrites golden_losses.json; only do that when a change of
behaviour is intended, and say which in the commit.
"""
from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).parent
GOLDEN = HERE / "golden_losses.json"
SEQ, BATCH = 64, 2
# Parameters renamed by a refactor: new name -> the name the weights were keyed by.
RENAMED: dict[str, str] = {f"lora.{t}_{ab}": f"lora_{t}_{ab}" for t in "qkvo" for ab in "ab"}


def keyed_weights(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().flatten()
            if not name.endswith(".weight") and flat.numel() and bool((flat == flat[0]).all()):
                continue  # constant init of a non-weight tensor (scales, gains, mixes): kept
            key = RENAMED.get(name, name)
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            w = torch.randn(p.shape, generator=g) * (1.5 / max(p.shape[-1], 1) ** 0.5)
            p.copy_(w)


def batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=g)
    return t[:, :-1], t[:, 1:]


def forward_loss(model, x, y, stage: int) -> torch.Tensor:
    """Mean training loss of the given plan stage (index into the model's stages)."""
    return model(x, y, stage=stage).mean()


def preset_losses(name: str) -> dict:
    from loopgolf.model.gpt import GPT
    from loopgolf.presets import get_preset
    from loopgolf.train.optim import build_optimizers

    cfg = get_preset(name)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    keyed_weights(model)
    model.train()
    x, y = batch(cfg.model.vocab_size)
    n_stages = len(model.stages)
    with torch.no_grad():
        stage_losses = [forward_loss(model, x, y, s).item() for s in range(n_stages)]
    opts = build_optimizers(model, cfg.optim, cfg.model)
    losses = []
    for step in range(2):
        loss = forward_loss(model, x, y, n_stages - 1)
        losses.append(loss.item())
        if step == 0:  # the loss after the second step is not recorded: skip its update
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
    return {"stage_losses": stage_losses, "step_losses": losses}


def main() -> None:
    from loopgolf.presets import PRESETS

    names = sys.argv[1:] or sorted(PRESETS)
    out = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for n in names:
        out[n] = preset_losses(n)
        print(n, out[n], flush=True)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
