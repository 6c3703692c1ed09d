"""Full-Hessian GPTQ onto the per-row grids of compress/quant.py, and its calibration inputs.

GPTQ quantizes a weight W (out x in) column by column and pushes each column's rounding error onto
the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs, H = sum X^T X
(techniques.md 5 "Full-Hessian GPTQ": 1% damping, act-order, Cholesky of H^-1, block 128). Rows
keep the scale of the round-to-nearest quantizer (percentile, searched or SDClip clip), so a GPTQ
tensor is stored with the same scheme and parts and needs no new dequantizer.

`collect_hessians` hooks every shipped nn.Linear of a model whose PARAM_KINDS storage is "matrix"
(training-only heads are skipped), so a shared (looped) block accumulates its Hessian over every
visit of the recurrence, and with quant.gptq_embed the tied embedding, from the head's inputs; `gptq_quantize_state` rounds exactly the tensors that compress/rules.py
`grid_quantizers` puts on a row grid. Calibration batches come from the caller: training
batches taken inside the training budget, or `sample_calibration` (the model samples its own text,
record (a): 64 x 2048 tokens at T = 0.8; no data access).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from loopgolf.compress.diagnostics import progress
from loopgolf.compress.quant import _float32_cpu
from loopgolf.compress.rules import QTensor, grid_quantizers, tensor_qcfg
from loopgolf.config import QuantConfig
from loopgolf.model.params import kind_of


def _accumulate(hess: dict[str, torch.Tensor], key: str, x: torch.Tensor) -> None:
    x = x.detach().reshape(-1, x.shape[-1]).float()
    if key not in hess:
        hess[key] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
    hess[key].addmm_(x.T, x)


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[torch.Tensor],
                     device: torch.device | str, embed: bool = False) -> dict[str, torch.Tensor]:
    """{"<module>.weight": sum over calibration inputs of X^T X (float32, on CPU)} for every
    shipped matrix nn.Linear (PARAM_KINDS storage "matrix"). Each batch is a (B, T) token tensor; the model is called as model.logits(x) when it
    has that method, else model(x). Under torch.distributed the caller all-reduces the sums.
    embed=True (quant.gptq_embed) adds "tok_emb.weight" for a GPT with tied embeddings: the tied
    head computes h W^T, so its inputs X are the final normed hidden states h that `unembed`
    receives (#1493 hooks final_norm's output, L239-243); `unembed` is wrapped on the instance for
    the calibration and restored after."""
    hess: dict[str, torch.Tensor] = {}
    hooks = []

    def hook_for(key: str):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            _accumulate(hess, key, inputs[0])
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and _is_matrix(f"{name}.weight", mod.weight):
            hooks.append(mod.register_forward_hook(hook_for(f"{name}.weight")))
    tied_head = embed and getattr(model, "lm_head", False) is None and hasattr(model, "unembed")
    if embed and not tied_head:
        raise ValueError("quant.gptq_embed needs a GPT with tied embeddings (model.tie_embeddings=true); "
                         "set quant.gptq_embed=false")
    if tied_head:
        unembed = model.unembed

        def recording_unembed(h: torch.Tensor) -> torch.Tensor:
            _accumulate(hess, "tok_emb.weight", h)
            return unembed(h)
        model.unembed = recording_unembed
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            x = x.to(device)
            model.logits(x) if hasattr(model, "logits") else model(x)
    finally:
        for h in hooks:
            h.remove()
        if tied_head:
            del model.unembed
        model.train(was_training)
    return {k: v.cpu() for k, v in hess.items()}


@torch.no_grad()
def sample_calibration(model: nn.Module, n_seqs: int, seq_len: int, temperature: float,
                       bos_id: int = 1, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """`n_seqs` sequences of `seq_len` tokens sampled from the model itself, each starting at
    `bos_id`, in batches of `batch` (no KV cache: one full forward per token, as record (a))."""
    if n_seqs < 1 or seq_len < 1 or not temperature > 0:
        raise ValueError("sample_calibration needs n_seqs >= 1, seq_len >= 1 and temperature > 0")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, n_seqs, batch):
            b = min(batch, n_seqs - start)
            x = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
            for _ in range(seq_len - 1):
                logits = model.logits(x)[:, -1].float() / temperature
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
                x = torch.cat([x, nxt], dim=1)
            out.append(x.cpu())
    finally:
        model.train(was_training)
    return out


def gptq_quantize_weight(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmax: int,
                         damp: float = 0.01, block: int = 128,
                         act_order: bool = True) -> torch.Tensor:
    """int8 q (same shape as w) on the grid q * scale[row], |q| <= qmax, minimizing the layer-output
    error ||(W - Q*s) X^T|| greedily with error feedback (GPTQ, Frantar et al. 2022)."""
    w = w.detach().float().clone()
    h = h.detach().float().clone()
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian of shape {list(h.shape)} does not fit a weight with {cols} "
                         f"input columns")
    s = scale.float().to(w.device)[:, None]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order \
        else torch.arange(cols, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * torch.mean(torch.diag(h)) + 1e-12)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qc = torch.clamp(torch.round(col / s[:, 0]), -qmax, qmax)
            q[:, i1 + i] = qc
            e = (col - qc * s[:, 0]) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    out = torch.empty_like(q)
    out[:, perm] = q
    return out.to(torch.int8)


def gptq_quantize_state(model_state: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor],
                        qcfg: QuantConfig, device: torch.device | str = "cpu") -> dict[str, QTensor]:
    """GPTQ parts for every tensor that has a Hessian and a row-grid scheme under `qcfg`, ready for
    artifact.pack(..., precomputed=...). Other tensors are left to round-to-nearest. Scales are
    always computed on CPU; `device` runs the column loop (CUDA is much faster on real sizes)."""
    grid = grid_quantizers(model_state, qcfg)
    out: dict[str, QTensor] = {}
    for name in progress(sorted(n for n in hessians if n in grid), "gptq"):
        quantizer = grid[name]
        w = _float32_cpu(model_state[name], quantizer.name)
        _, scale16 = quantizer.grid(w, tensor_qcfg(name, w, qcfg))  # the round-to-nearest quantizer's scales
        q = gptq_quantize_weight(w.to(device), hessians[name].to(device),
                                 scale16.float().to(device), quantizer.qmax, qcfg.gptq_damp,
                                 qcfg.gptq_block, qcfg.gptq_act_order).cpu()
        out[name] = (quantizer.name, {"q": q.contiguous().numpy(),
                                      "scale": scale16.contiguous().numpy()})
    return out


def _is_matrix(name: str, weight: torch.Tensor) -> bool:
    kind = kind_of(name, weight)
    return kind.storage == "matrix" and not kind.training_only
