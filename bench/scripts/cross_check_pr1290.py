"""PR #1290's model and optimizers against `seed-loop45`'s, step by step on the CPU from the same weights.

A fidelity gap on a GPU can be init noise, GPU numerics, data or a real mismatch. This check removes
the first three, as cross_check_pr21.py does for PR #21: it imports the published script (the user's
copy, never stored here; FlashAttention-3 replaced by loopgolf.lab.fidelity's SDPA stand-in), builds
its GPT and loopgolf's at a tiny shape with every feature of the preset (11 layers, layers 4-5 looped
to 13 virtual layers, XSA everywhere, partial RoPE, LN scale, BigramHash, VE into V on physical 9-10,
SmearGate, 5 U-Net skips, LeakyReLU^2), and copies the script's weights into loopgolf's: the banks
(its L847-850: qo_bank = Q | out, kv_bank = K | V, mlp_up/down) into the per-block Linears, every
other tensor by name (an unmapped parameter on either side is an error).

1. Forward: the loss of both codes from random weights (zero inits perturbed, so every path carries
   signal), for the flat plan and for the looped one (script: set_recurrence_active, its L924-931, L941-976;
   loopgolf: stage 1 of plan_stages). If they differ, per-virtual-layer block inputs and outputs are
   compared and the first that parts is printed.
2. Training: from the script's own init, the script's optimizers as its main() builds them
   (L1862-1911: Muon with MuonEq-R on the banks, AdamW for embeddings and scalars, WD 0.04) and
   loopgolf's `build_optimizers`, grad clip 0.3 on both (script L2059-2060, loopgolf train/loop.py L151-152),
   constant LR, the same momentum warm-up 0.92 -> 0.99, and the recurrence switched on at
   --recur-at on both sides (script L2040-2042). Markov-chain batches, as cross_check_pr21.py.

    python bench/scripts/cross_check_pr1290.py .ref/pr1290_train_gpt.py [--steps 25] [--recur-at K]
        [--muon fp32|ns-fp32|bf16] [--forward-only] [--override KEY=VALUE ...]

The script's Muon works in bf16 (L240-243: gradient and momentum buffer, L253-254: row norm, L112-131:
Newton-Schulz); loopgolf's CPU Muon is float32. --muon fp32 (default) runs the script's Muon.step with
every bf16 cast made float32, so equal maths gives equal curves to float rounding; ns-fp32 swaps only
its Newton-Schulz (as cross_check_pr21.py does); bf16 keeps the script as published.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile

import torch

from cross_check_pr21 import markov_batches  # this folder: the same batches for every check

V, D, HEADS, KV, LAYERS, HIDDEN, T, B = 256, 64, 4, 2, 11, 192, 64, 8
BIGRAM_BUCKETS, BIGRAM_DIM, VE_DIM, ROPE_DIMS = 128, 24, 16, 8  # head_dim 16: partial RoPE on 8
ROPE_TRAIN_SEQ = None  # --rope-train-seq
MOM_START, MOM_END, MOM_FRAC = 0.92, 0.99, 0.218  # the preset's warm-up, as a fraction of the run
OVERRIDES = [f"model.vocab_size={V}", f"model.dim={D}", f"model.n_heads={HEADS}", f"model.n_kv_heads={KV}",
             f"model.mlp_hidden={HIDDEN}", f"model.bigram_buckets={BIGRAM_BUCKETS}",
             f"model.bigram_dim={BIGRAM_DIM}", f"model.ve_dim={VE_DIM}", f"model.rope_dims={ROPE_DIMS}"]


def load_script(path: str):
    from loopgolf.lab.fidelity import SDPA_STANDIN
    stand_in = tempfile.mkdtemp(prefix="fa3_standin_")
    with open(os.path.join(stand_in, "flash_attn_interface.py"), "w") as f:
        f.write(SDPA_STANDIN)
    sys.path.insert(0, stand_in)
    spec = importlib.util.spec_from_file_location("pr1290_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ns_float32(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The script's batched Newton-Schulz (L112-131) with float32 in place of its bf16 cast."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if transposed else X


@contextlib.contextmanager
def bf16_as_fp32():
    """Inside, Tensor.bfloat16() returns float32 and the bf16 dtype in zeros(..., dtype=) is float32:
    the script's Muon.step (L240-254) and _build (L170-173) then run in float32, unedited."""
    saved_method, saved_zeros = torch.Tensor.bfloat16, torch.zeros

    def zeros(*a, dtype=None, **k):
        return saved_zeros(*a, dtype=torch.float32 if dtype is torch.bfloat16 else dtype, **k)
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.float()
    torch.zeros = zeros
    try:
        yield
    finally:
        torch.Tensor.bfloat16, torch.zeros = saved_method, saved_zeros


def script_model(mod, seed: int):
    torch.manual_seed(seed)
    model = mod.GPT(vocab_size=V, num_layers=LAYERS, model_dim=D, num_heads=HEADS, num_kv_heads=KV,
                    mlp_mult=HIDDEN / D, tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0,
                    rope_base=10000.0, qk_gain_init=1.5, bigram_vocab_size=BIGRAM_BUCKETS,
                    bigram_dim=BIGRAM_DIM, xsa_last_n=LAYERS, rope_dims=ROPE_DIMS, ln_scale=True,
                    ve_enabled=True, ve_dim=VE_DIM, ve_layers=f"{LAYERS - 2},{LAYERS - 1}")
    model.recur_layers = [4, 5]  # RECUR_LAYERS default, L98
    for block in model.blocks:  # None: as published, RoPE rescaled above 1024 tokens (L591-594, L873)
        block.attn.rotary.train_seq_len = ROPE_TRAIN_SEQ or block.attn.rotary.train_seq_len
    return model


def script_optimizers(mod, m):
    """The script's main(), L1862-1911: its groups, LRs, betas and weight decays (Hyperparameters)."""
    hp = mod.Hyperparameters
    control = mod.CONTROL_TENSOR_NAME_PATTERNS
    scalar = [p for n, p in m.blocks.named_parameters() if p.ndim < 2 or any(c in n for c in control)]
    scalar += [m.skip_weights, m.smear.gate, m.bigram.scale, m.bigram.proj.weight, m.ve_shared.proj.weight,
               m.ve_shared.scale, *m.ve_layer_scales]
    lr = hp.tied_embed_lr
    tok = [{"params": [w], "lr": lr, "base_lr": lr}
           for w in (m.tok_emb.weight, m.bigram.embed.weight, m.ve_shared.embed.weight)]
    betas = (hp.beta1, hp.beta2)
    return [torch.optim.AdamW(tok, betas=betas, eps=hp.adam_eps, weight_decay=hp.adam_wd, fused=True),
            torch.optim.AdamW([{"params": scalar, "lr": hp.scalar_lr, "base_lr": hp.scalar_lr}], betas=betas,
                              eps=hp.adam_eps, weight_decay=hp.adam_wd, fused=True),
            mod.Muon([m.qo_bank, m.kv_bank, m.mlp_up_bank, m.mlp_down_bank], lr=hp.matrix_lr,
                     momentum=hp.muon_momentum, backend_steps=hp.muon_backend_steps, weight_decay=hp.muon_wd)]


def source_of(name: str, src: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """The script tensor that loopgolf's parameter `name` holds, and the script parameters it reads."""
    n = LAYERS
    if name.startswith("blocks."):
        i, rest = int(name.split(".")[1]), name.split(".", 2)[2]
        banks = {"attn.c_q.weight": ("qo_bank", i), "attn.proj.weight": ("qo_bank", n + i),
                 "attn.c_k.weight": ("kv_bank", i), "attn.c_v.weight": ("kv_bank", n + i),
                 "mlp.fc.weight": ("mlp_up_bank", i), "mlp.proj.weight": ("mlp_down_bank", i)}
        if rest in banks:
            bank, row = banks[rest]
            return src[bank][row], [bank]
    renamed = {"bigram.table.weight": "bigram.embed.weight", "ve_inject.table.weight": "ve_shared.embed.weight",
               "ve_inject.proj.weight": "ve_shared.proj.weight", "ve_inject.scale": "ve_shared.scale"}
    if name == "ve_inject.scales":
        keys = ["ve_layer_scales.0", "ve_layer_scales.1"]
        return torch.cat([src[k] for k in keys]), keys
    key = renamed.get(name, name)
    if key not in src:
        raise ValueError(f"loopgolf parameter {name} has no counterpart in the script")
    return src[key], [key]


def copy_weights(s_model, l_model) -> None:
    src = {n: p.detach() for n, p in s_model.named_parameters()}
    used: set[str] = set()
    with torch.no_grad():
        for name, p in l_model.named_parameters():
            t, keys = source_of(name, src)
            if t.shape != p.shape:
                raise ValueError(f"{name}: loopgolf {tuple(p.shape)} vs script {tuple(t.shape)}")
            p.copy_(t)
            used.update(keys)
    if missing := sorted(set(src) - used):
        raise ValueError(f"script parameters with no loopgolf counterpart: {missing}")


def loopgolf_model(s_model, extra: list[str]):
    from loopgolf.model.gpt import GPT
    from loopgolf.presets import get_preset
    cfg = get_preset("seed-loop45").override(OVERRIDES + extra)
    model = GPT(cfg.model)
    copy_weights(s_model, model)
    model.train()
    return model, cfg


def perturb(model, seed: int) -> None:
    """Every parameter + N(0, 1) * 0.5 / sqrt(last dim): zero inits (out-projections, bigram table)
    carry signal, so the forward check reaches every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 / max(p.shape[-1] if p.ndim else 1, 1) ** 0.5)


def trace(s_model, l_model, stage: int, x, y) -> str:
    """Inputs and outputs of every block call in both codes, in call order: the first that parts."""
    rec: dict[str, list] = {"s": [], "l": []}
    hooks = []
    for side, blocks in (("s", s_model.blocks), ("l", l_model.blocks)):
        for i, blk in enumerate(blocks):
            def hook(mod, args, out, side=side, i=i):
                rec[side].append((i, args[0].detach(), (out[0] if isinstance(out, tuple) else out).detach()))
            hooks.append(blk.register_forward_hook(hook))
    with torch.no_grad():
        s_model(x, y)
        l_model(x, y, stage=stage)
    for h in hooks:
        h.remove()
    for v, ((si, sx, so), (li, lx, lo)) in enumerate(zip(rec["s"], rec["l"])):
        for what, a, b in (("input", sx, lx), ("output", so, lo)):
            rel = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
            if si != li or rel > 1e-5:
                return f"virtual layer {v} (script block {si}, loopgolf block {li}): {what} rel diff {rel:.2e}"
    return f"all {len(rec['s'])} / {len(rec['l'])} block calls equal: the difference is after the last block"


def forward_check(mod, seed: int, extra: list[str]) -> float:
    s_model = script_model(mod, seed)
    perturb(s_model, seed + 1)
    l_model, _ = loopgolf_model(s_model, extra)
    x, y = next(markov_batches(1, V, B, T, seed=7))
    worst = 0.0
    for stage, looped in ((0, False), (1, True)):
        s_model.set_recurrence_active(looped)
        with torch.no_grad():
            a, b = s_model(x, y).item(), l_model(x, y, stage=stage).mean().item()
        rel = abs(a - b) / abs(a)
        worst = max(worst, rel)
        print(f"forward {'looped (13 virtual)' if looped else 'flat (11)':<20} script {a:.7f} loopgolf {b:.7f}"
              f" rel {rel:.2e}", flush=True)
        if rel > 1e-6:
            print("  first difference:", trace(s_model, l_model, stage, x, y))
    return worst


def main() -> int:
    global T, B, ROPE_TRAIN_SEQ
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("script", help="your copy of PR #1290's train_gpt.py")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--recur-at", type=int, default=None, help="step the loop starts (default: steps // 2)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--muon", choices=("fp32", "ns-fp32", "bf16"), default="fp32",
                    help="the script's Muon: all float32, only its Newton-Schulz float32, or as published")
    ap.add_argument("--seq", type=int, default=T, help="tokens per sequence (the script rescales RoPE above 1024)")
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--rope-train-seq", type=int, default=None,
                    help="set the script's Rotary train_seq_len (published: 1024) to test the RoPE deviation")
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra loopgolf config override (negative controls: the check must then part)")
    args = ap.parse_args()
    T, B, ROPE_TRAIN_SEQ = args.seq, args.batch, args.rope_train_seq
    torch.set_num_threads(1)
    recur_at = args.steps // 2 if args.recur_at is None else args.recur_at
    mod = load_script(args.script)
    print(f"shape: vocab {V}, d {D}, {HEADS}/{KV} heads, {LAYERS} layers (4-5 looped), mlp {HIDDEN}, "
          f"bigram {BIGRAM_BUCKETS}x{BIGRAM_DIM}, VE {VE_DIM}, rope_dims {ROPE_DIMS}, batch {B}x{T}")
    fwd = forward_check(mod, args.seed, args.override)
    print(f"forward worst relative difference: {fwd:.2e}")
    if args.forward_only:
        return 0
    if args.muon == "ns-fp32":
        mod.zeropower_via_newtonschulz5 = ns_float32
    from loopgolf.train.optim import build_optimizers
    s_model = script_model(mod, args.seed)
    s_model.train()
    l_model, cfg = loopgolf_model(s_model, args.override)
    s_opts = script_optimizers(mod, s_model)
    l_opts = build_optimizers(l_model, cfg.optim, cfg.model)
    clip = mod.Hyperparameters.grad_clip_norm
    assert clip == cfg.optim.grad_clip, (clip, cfg.optim.grad_clip)
    warm = max(1, round(MOM_FRAC * args.steps))
    print(f"muon: script {args.muon}; recurrence from step {recur_at + 1}; momentum warm-up {warm} steps; "
          f"grad clip {clip}")
    print(f"{'step':>4} {'stage':>6} {'script':>10} {'loopgolf':>10} {'|diff|':>9} {'rel':>9}")
    worst = 0.0
    for step, (x, y) in enumerate(markov_batches(args.steps, V, B, T)):
        looped = step >= recur_at
        s_model.set_recurrence_active(looped)
        frac = min(step / warm, 1.0)  # the script's L2052-2055
        mom = (1 - frac) * MOM_START + frac * MOM_END
        for opt in (s_opts[2], *[o for o in l_opts if o.__class__.__name__ == "Muon"]):
            for group in opt.param_groups:
                group["momentum"] = mom
        a = s_model(x, y)
        b = l_model(x, y, stage=int(looped)).mean()
        for loss, model, opts in ((a, s_model, s_opts), (b, l_model, l_opts)):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with bf16_as_fp32() if (opts is s_opts and args.muon == "fp32") else contextlib.nullcontext():
                for o in opts:
                    o.step()
            for o in opts:
                o.zero_grad(set_to_none=True)
        diff = abs(a.item() - b.item())
        worst = max(worst, diff / abs(a.item()))
        print(f"{step + 1:>4} {'loop' if looped else 'flat':>6} {a.item():>10.5f} {b.item():>10.5f} {diff:>9.2e}"
              f" {diff / abs(a.item()):>9.2e}", flush=True)
    print(f"training worst relative difference: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
