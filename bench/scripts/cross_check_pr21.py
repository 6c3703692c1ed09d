"""PR #21's model and optimizers against `seed-lora-mtp`'s, step by step on the CPU from the same weights.

The fidelity harness compares two codes on a GPU from their own inits; a gap there can be init noise,
GPU numerics, data or a real mismatch. This check removes the first three: it builds the published
script's GPT (imported from the user's copy, never stored here) and loopgolf's at a small shape,
copies the script's weights into loopgolf's (gate|up stacked into the fused SwiGLU weight, the LoRA
sets into the stacks), feeds both the same batches of a learnable Markov-chain language, and steps
the script's optimizers (its Adam/Muon groups as its main() builds them, L946-990) and loopgolf's
`build_optimizers` side by side, with the same momentum warm-up, constant LR. The loss each step
includes the MTP term (the script's L1107-1119). Equal curves mean the model and optimizer maths
match; the first step that parts says where to look.

    python bench/scripts/cross_check_pr21.py .ref/pr21_train_gpt.py [--steps 25] [--ns-bf16] [--joint-swiglu]

The script's Newton-Schulz runs in bf16 (its L102-113) and its Muon applies updates through a bf16
buffer (L144); loopgolf's CPU Newton-Schulz is float32. By default the script's NS is swapped for
the same iteration in float32 (its update buffer stays bf16), so the curves should agree to bf16
rounding of the updates (~1e-3); --ns-bf16 keeps the script's own NS. --joint-swiglu restores
loopgolf's behaviour before 2026-12-03 (one Newton-Schulz over the stacked gate|up weight).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

import torch
import torch.nn.functional as F

V, D, HEADS, KV, LAYERS, LOOPS, RANK, T, B = 256, 64, 4, 2, 4, 3, 4, 64, 8
MOM_WARMUP = 22  # steps: the harness's 200-step scaling of the PR's 500 (seed-lora-mtp: 0.11 of the run)


def load_script(path: str):
    spec = importlib.util.spec_from_file_location("pr21_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ns_float32(G: torch.Tensor, steps: int = 10, eps: float = 1e-7) -> torch.Tensor:
    a, b, c = (3.4445, -4.7750, 2.0315)  # the script's L102-113, in float32
    X = G.float() / (G.float().norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


def script_side(mod, seed: int):
    torch.manual_seed(seed)
    model = mod.GPT(vocab_size=V, num_unique_layers=LAYERS, num_recurrence=LOOPS, model_dim=D, num_heads=HEADS,
                    num_kv_heads=KV, mlp_mult=2, tie_embeddings=True, tied_embed_init_std=0.005,
                    logit_softcap=30.0, use_swiglu=True, use_recurrence_scales=True, rope_base=10000.0,
                    qk_gain_init=1.5, lora_rank=RANK)
    heads = [mod.MTPHead(D, V, 30.0) for _ in range(2)]
    control = mod.CONTROL_TENSOR_NAME_PATTERNS
    named = list(model.blocks.named_parameters())
    matrix = [p for n, p in named if p.ndim == 2 and not any(c in n for c in control)]
    scalar = [p for n, p in named if p.ndim < 2 or any(c in n for c in control)]
    scalar += [model.skip_weights, model.recurrence_scales]
    matrix += [p for p in model.lora_sets.parameters() if p.ndim == 2]
    matrix += [p for h in heads for p in h.parameters() if p.ndim == 2]
    opts = [torch.optim.Adam([model.tok_emb.weight], lr=0.05, betas=(0.9, 0.95), eps=1e-8),
            mod.Muon(matrix, lr=0.04, momentum=0.95, backend_steps=5),
            torch.optim.Adam(scalar, lr=0.04, betas=(0.9, 0.95), eps=1e-8)]
    return model, heads, opts


def script_loss(model, heads, x, y) -> torch.Tensor:
    loss, hidden = model(x, y)
    mtp = torch.zeros(())
    for k, head in enumerate(heads, 1):  # the script's L1107-1119
        shifted = y[:, k:]
        h = head.norm(head.proj(hidden[:, :shifted.size(1), :])).reshape(-1, hidden.size(-1))
        logits = F.linear(h, model.tok_emb.weight)
        logits = head.logit_softcap * torch.tanh(logits / head.logit_softcap)
        mtp = mtp + F.cross_entropy(logits.float(), shifted.reshape(-1), reduction="mean")
    return loss + 0.15 * mtp / len(heads)


def loopgolf_side(script_model, heads, joint_swiglu: bool = False):
    from loopgolf.model.gpt import GPT
    from loopgolf.presets import get_preset
    from loopgolf.train.optim import build_optimizers

    cfg = get_preset("seed-lora-mtp").override([
        f"model.vocab_size={V}", f"model.dim={D}", f"model.n_heads={HEADS}", f"model.n_kv_heads={KV}",
        f"model.mlp_hidden={((2 * 2 * D // 3 + 63) // 64) * 64}", f"model.lora_rank={RANK}",
        f"model.plan={LAYERS}x{LOOPS}"])
    model = GPT(cfg.model)
    src = dict(script_model.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.fc.weight"):
                stem = name[: -len("fc.weight")]
                p.copy_(torch.cat([src[stem + "gate.weight"], src[stem + "up.weight"]]))
            elif name.startswith("lora."):
                t, ab = name[len("lora."):].split("_")
                part = {"a": "down", "b": "up"}[ab]
                p.copy_(torch.stack([src[f"lora_sets.{j}.{t}.{part}.weight"] for j in range(p.size(0))]))
            elif name.startswith("mtp_heads."):
                p.copy_(heads[int(name.split(".")[1])].proj.weight)
            else:
                p.copy_(src[name])
        if joint_swiglu:
            for name, p in model.named_parameters():
                if name.endswith("mlp.fc.weight"):
                    p.muon_row_blocks = 1
    model.train()
    return model, build_optimizers(model, cfg.optim, cfg.model)


def markov_batches(steps: int, vocab: int = V, batch: int = B, seq: int = T, seed: int = 0):
    """`steps` batches (inputs, targets) of `batch` rows of `seq` tokens from a Markov chain in which
    every token has 4 possible successors: a language both codes can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 4), generator=g)
    for _ in range(steps):
        tok = torch.empty(batch, seq + 1, dtype=torch.long)
        tok[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(seq):
            tok[:, t + 1] = nxt[tok[:, t], torch.randint(0, 4, (batch,), generator=g)]
        yield tok[:, :-1], tok[:, 1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("script", help="your copy of PR #21's train_gpt.py")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--ns-bf16", action="store_true", help="keep the script's bf16 Newton-Schulz")
    ap.add_argument("--joint-swiglu", action="store_true", help="one NS over gate|up (loopgolf before the fix)")
    args = ap.parse_args()
    mod = load_script(args.script)
    if not args.ns_bf16:
        mod.zeropower_via_newtonschulz5 = ns_float32
    s_model, heads, s_opts = script_side(mod, args.seed)
    l_model, l_opts = loopgolf_side(s_model, heads, args.joint_swiglu)
    print(f"{'step':>4} {'script':>10} {'loopgolf':>10} {'|diff|':>9}")
    worst = 0.0
    for step, (x, y) in enumerate(markov_batches(args.steps)):
        mom = 0.85 + 0.10 * min(step / MOM_WARMUP, 1.0)  # the script's L1123-1126
        for opt in (s_opts[1], *[o for o in l_opts if o.__class__.__name__ == "Muon"]):
            for group in opt.param_groups:
                group["momentum"] = mom
        a = script_loss(s_model, heads, x, y)
        b = l_model(x, y).mean()
        for loss, opts in ((a, s_opts), (b, l_opts)):
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
        diff = abs(a.item() - b.item())
        worst = max(worst, diff / abs(a.item()))
        print(f"{step + 1:>4} {a.item():>10.5f} {b.item():>10.5f} {diff:>9.2e}", flush=True)
    print(f"worst relative difference: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
