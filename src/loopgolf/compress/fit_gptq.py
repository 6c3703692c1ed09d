"""GPTQ-aware budget fitting: search SDClip k, re-running GPTQ per trial, to land under a byte target.

(A clip without k, quant.clip=percentile/search, takes PR #1290's path instead: GPTQ once, +-1
pruning, then one bit fewer and GPTQ again: `fit_gptq_fixed_clip`.)

compress/fit.py bisects k with round-to-nearest rounding, which is cheap. With GPTQ every k needs a
fresh GPTQ pass (the error feedback depends on the grid), so trials are few and placed by a secant on
the log model  total(k) ~ A - B * log2(k)  (a coarser grid costs ~1 bit per weight per doubling of
the clip, PR #1394):
  - the first trial runs at quant.sdclip_k; the first slope guess is B = (row-grid weights) / 8
    bytes per doubling of k; later trials take the slope from the measured points (the bracketing
    pair when the aim lies between two of them);
  - every trial aims at the middle of the window [target - 0.5%, target]; k is clamped to [2, 64]
    (widened to include the starting k) and the search stops in the window, after `max_trials`, or
    when it would repeat a k;
  - the fitting trial with the most bytes (the finest grid) wins; when none fits, selective +-1
    pruning of the largest-k trial's parts is bisected (fit.py's bisection).
A slow codec (fit.slow_codec: best, lzma, brotli, zstd above level 9; brotli-11 or zstd-22 takes
20-80 s per 20 MB pack) is not run per trial: a trial's estimate is code + the order-0 entropy of
its streams (artifact.entropy_size) x ratio, the ratio being real / estimated bytes of the nearest
(in log k) trial packed for real, else fit.START_RATIOS of the codec.
The first trial whose estimate comes within CLOSE of the window is packed for real, and every later
trial packs with the real config only (the last steps need exact sizes: the ratio drifts by about
as much as the window is wide). The returned artifact is always one packed with the real config and
checked at its real size; FitError when nothing fits.
Deterministic: identical input (on one device) gives identical bytes.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from loopgolf.compress.artifact import entropy_size, pack_quantized
from loopgolf.compress.diagnostics import progress
from loopgolf.compress.fit import (
    DEFAULT_TARGET,
    FitError,
    FitResult,
    MetaArg,
    Packer,
    bisect_knob,
    fit_to_budget,
    lower_widths,
    START_RATIOS,
    meta_function,
    slow_codec,
)
from loopgolf.compress.gptq import gptq_quantize_state
from loopgolf.compress.prune import prune_ones
from loopgolf.compress.quant import dtype_name
from loopgolf.compress.rules import QTensor, grid_quantizers, quantize_state
from loopgolf.config import QuantConfig

K_RANGE = (2.0, 64.0)
WINDOW = 0.005  # a trial within 0.5% under the target ends the search
CLOSE = 0.01  # a fast trial this close (fraction of the target) to the window is packed for real


@dataclass
class _Trial:
    k: float
    parts: dict[str, QTensor]  # GPTQ output
    quantized: dict[str, QTensor]  # every tensor, GPTQ parts included
    fast_bytes: int | None  # entropy-estimated artifact bytes; None when packed for real only
    blob: bytes | None = None  # packed with the real config, once done
    codec: str = ""  # quant.codec: picks the start ratio of the estimates

    def estimate(self, code_bytes: int, done: list[_Trial]) -> int:
        """Total bytes: exact once packed for real, else the entropy estimate scaled by the
        real / estimate ratio of the nearest (in log k) trial packed for real."""
        if self.blob is not None or self.fast_bytes is None:
            return len(self.blob or b"") + code_bytes
        return code_bytes + round(self.fast_bytes * self.ratio(done))

    def ratio(self, done: list[_Trial]) -> float:
        both = [(t.k, len(t.blob) / t.fast_bytes) for t in done if t.blob and t.fast_bytes]
        if not both:
            return START_RATIOS.get(self.codec, 1.0)
        return min(both, key=lambda r: (abs(math.log2(r[0]) - math.log2(self.k)), r[0]))[1]


def grid_weights(state: dict[str, torch.Tensor], qcfg: QuantConfig) -> int:
    """Number of weights stored on a per-row grid (the ones whose bytes follow k)."""
    return sum(state[n].numel() for n in grid_quantizers(state, qcfg))


def next_k(points: list[tuple[float, int]], aim: float, slope0: float,
           bounds: tuple[float, float]) -> float:
    """The k whose total the log model A - B log2(k) puts at `aim`, from measured (k, total)
    points in trial order; `slope0` (bytes per doubling) when the points give no usable slope."""
    pts = sorted((math.log2(k), float(t)) for k, t in points)
    above = [p for p in pts if p[1] > aim]  # too big: k must grow past these
    below = [p for p in pts if p[1] <= aim]
    if above and below and max(above)[0] < min(below)[0]:  # interpolate in the tightest bracket
        (xa, ya), (xb, yb) = max(above), min(below)
        x0, y0 = xa, ya
    else:  # extrapolate from the point nearest the aim, slope of the last two trials
        recent = [(math.log2(k), float(t)) for k, t in points[-2:]]
        (xa, ya), (xb, yb) = recent if len(recent) == 2 else (recent[0], recent[0])
        x0, y0 = min(pts, key=lambda p: (abs(p[1] - aim), p[0]))
    slope = (ya - yb) / (xb - xa) if xb != xa else 0.0
    if not (slope > 0 and math.isfinite(slope)):
        slope = slope0
    x = x0 + (y0 - aim) / slope
    lo, hi = math.log2(bounds[0]), math.log2(bounds[1])
    return round(2.0 ** min(max(x, lo), hi), 3)


def fit_gptq(state: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], qcfg: QuantConfig,
             target_bytes: int = DEFAULT_TARGET, code_bytes: int = 0, meta: MetaArg = None,
             device: torch.device | str = "cpu", max_trials: int = 4,
             fast_trials: bool = True) -> FitResult:
    """GPTQ artifact whose size plus `code_bytes` lands just under `target_bytes`, searching
    quant.sdclip_k (then quant.prune_frac). `meta` is the artifact's meta, or a function of the
    packed config returning it (to embed the chosen knobs). FitResult.qcfg reproduces the blob:
    pack(state, meta, qcfg, precomputed=gptq_quantize_state(state, hessians, qcfg))."""
    if not hessians:
        raise FitError("the GPTQ fitter needs calibration Hessians; none were collected")
    if qcfg.clip != "sdclip":
        return fit_gptq_fixed_clip(state, hessians, qcfg, target_bytes, code_bytes, meta, device)
    if max_trials < 1:
        raise ValueError(f"max_trials={max_trials} must be >= 1")
    meta_for = meta_function(meta)
    approx = fast_trials and slow_codec(qcfg)
    shapes = {n: (tuple(t.shape), dtype_name(t.dtype)) for n, t in state.items()}
    slope0 = max(grid_weights(state, qcfg) / 8.0, 1.0)
    lo_ok = target_bytes - int(WINDOW * target_bytes)
    aim = (lo_ok + target_bytes) / 2.0
    bounds = (min(K_RANGE[0], qcfg.sdclip_k), max(K_RANGE[1], qcfg.sdclip_k))
    log: list[dict] = []
    done: list[_Trial] = []
    exact = not approx  # trials pack with the real config

    def real_pack(cfg: QuantConfig, quantized: dict[str, QTensor]) -> bytes:
        t0 = time.perf_counter()
        blob = pack_quantized(quantized, shapes, meta_for(cfg), cfg)
        log.append({"stage": "real", "sdclip_k": cfg.sdclip_k, "prune_frac": cfg.prune_frac,
                    "total_bytes": len(blob) + code_bytes, "exact": True,
                    "seconds": round(time.perf_counter() - t0, 3)})
        return blob

    def result(trial: _Trial) -> FitResult:
        blob = trial.blob
        assert blob is not None, "a returned trial is always packed with the real config"
        cfg = dataclasses.replace(qcfg, sdclip_k=trial.k)
        return FitResult(blob, cfg, len(blob) + code_bytes, target_bytes, log)

    for i in progress(range(max_trials), "fit gptq k"):
        k = qcfg.sdclip_k if i == 0 else next_k(
            [(t.k, t.estimate(code_bytes, done)) for t in done], aim, slope0, bounds)
        if any(abs(k - t.k) < 1e-9 for t in done):
            break
        t0 = time.perf_counter()
        cfg = dataclasses.replace(qcfg, sdclip_k=k)
        parts = gptq_quantize_state(state, hessians, cfg, device=device)
        quantized = quantize_state(state, cfg, parts)
        if qcfg.prune_frac > 0:
            quantized = prune_ones(quantized, state, qcfg.prune_frac)
        if exact:
            trial = _Trial(k, parts, quantized, None,
                           pack_quantized(quantized, shapes, meta_for(cfg), cfg))
        else:
            trial = _Trial(k, parts, quantized, entropy_size(quantized, shapes, meta_for(cfg), cfg),
                           codec=qcfg.codec)
        entry = {"stage": "k", "sdclip_k": k, "prune_frac": qcfg.prune_frac,
                 "total_bytes": trial.estimate(code_bytes, done), "exact": exact,
                 "seconds": round(time.perf_counter() - t0, 3)}
        if trial.fast_bytes is not None:
            entry["fast_bytes"] = trial.fast_bytes + code_bytes
        log.append(entry)
        done.append(trial)
        est = trial.estimate(code_bytes, done)
        if not exact and lo_ok - CLOSE * target_bytes <= est <= target_bytes * (1 + CLOSE):
            trial.blob = real_pack(cfg, quantized)  # calibrate; the last steps are exact
            exact = True
            est = trial.estimate(code_bytes, done)
        if lo_ok <= est <= target_bytes:
            return result(trial)

    # out of trials: the fitting ones, most bytes first, each checked at its real size
    ranked = [(t.estimate(code_bytes, done), t) for t in done]  # ranked before any packing
    for est, trial in sorted(ranked, key=lambda r: (-r[0], r[1].k)):
        if est > target_bytes:
            continue
        if trial.blob is None:
            trial.blob = real_pack(dataclasses.replace(qcfg, sdclip_k=trial.k), trial.quantized)
        if len(trial.blob) + code_bytes <= target_bytes:
            return result(trial)
    last = max(done, key=lambda t: t.k)
    if last.blob is None:  # an estimate is not a verdict: the coarsest grid at its real size
        last.blob = real_pack(dataclasses.replace(qcfg, sdclip_k=last.k), last.quantized)
        if len(last.blob) + code_bytes <= target_bytes:
            return result(last)
    return _prune_fallback(state, last, qcfg, approx, last.ratio(done), target_bytes, code_bytes,
                           meta_for, log, real_pack)


def fit_gptq_fixed_clip(state: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor],
                        qcfg: QuantConfig, target_bytes: int = DEFAULT_TARGET, code_bytes: int = 0,
                        meta: MetaArg = None, device: torch.device | str = "cpu") -> FitResult:
    """PR #1290's order for a clip that has no k (quant.clip=percentile/search): GPTQ once, then
    selective +-1 pruning to the target (fit.py on the GPTQ parts); when even full pruning is over,
    every width one bit lower (fit.lower_widths) and GPTQ again. FitResult.qcfg reproduces the blob
    with precomputed=gptq_quantize_state(state, hessians, FitResult.qcfg)."""
    cfg, trials = qcfg, []
    while True:
        parts = gptq_quantize_state(state, hessians, cfg, device=device)
        try:
            res = fit_to_budget(state, cfg, target_bytes, code_bytes, meta, precomputed=parts)
        except FitError:
            lowered = lower_widths(cfg)
            if lowered is None:
                raise
            trials.append({"stage": "widths", "scheme": lowered.scheme, "bits_rules": lowered.bits_rules})
            cfg = lowered
            continue
        res.trials = trials + res.trials
        return res


def _prune_fallback(state: dict[str, torch.Tensor], last: _Trial, qcfg: QuantConfig, approx: bool,
                    ratio: float, target_bytes: int, code_bytes: int, meta_for, log: list[dict],
                    real_pack) -> FitResult:
    """Bisect quant.prune_frac on the largest-k GPTQ parts (entropy estimates through the calibrated
    ratio when `approx`), then check the real size; one retry aims lower by the overshoot."""
    cfg_k = dataclasses.replace(qcfg, sdclip_k=last.k)
    packer = Packer(state, meta_for, code_bytes, last.parts)
    packer.fast, packer.last_ratio = approx, ratio
    aim = target_bytes
    smallest = min(t["total_bytes"] for t in log)
    for _ in range(2):
        hit = bisect_knob(packer, cfg_k, "prune_frac", qcfg.prune_frac, 1.0, aim)
        log += [{"stage": "prune", **t} for t in packer.trials]
        smallest = min([smallest] + [t["total_bytes"] for t in packer.trials])
        packer.trials = []
        if hit is None:
            break
        cfg = hit[0]
        if hit[2] is not None:
            blob = hit[2]
        else:
            quantized = prune_ones(quantize_state(state, cfg, last.parts), state, cfg.prune_frac)
            blob = real_pack(cfg, quantized)
        if len(blob) + code_bytes <= target_bytes:
            return FitResult(blob, cfg, len(blob) + code_bytes, target_bytes, log)
        aim -= len(blob) + code_bytes - target_bytes + 1
    raise FitError(f"cannot fit under {target_bytes:,} B with GPTQ (smallest tried: {smallest:,} B "
                   f"at quant.sdclip_k={last.k} and pruning); lower the bit widths "
                   f"(quant.scheme / quant.bits_rules) or shrink the model")
