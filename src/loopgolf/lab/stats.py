"""Seed statistics and the challenge's significance rules, without scipy.

Per-seed scores are summarized as mean ± sample std in bpb and in nats. A new result is compared
with a reference set (e.g. the previous record's seeds) by a one-sided Welch t-test, H1: the new
mean loss is lower (scipy.stats.ttest_ind(new, ref, equal_var=False, alternative='less')). The
Student-t CDF comes from the regularized incomplete beta function, evaluated by its continued
fraction with the modified Lentz method. Two rules are stated (users.md section 3, "Reporting"):
  record:      improvement >= 0.005 nats and p < 0.01 (the challenge README);
  progression: p < 0.25 (the maintainers' looser policy, PR #1902).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

RECORD_DELTA_NATS = 0.005
RECORD_P = 0.01
PROGRESSION_P = 0.25


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std: no values")
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def summarize(val_loss: Sequence[float], val_bpb: Sequence[float]) -> dict:
    ml, sl = mean_std(val_loss)
    mb, sb = mean_std(val_bpb)
    return {"n": len(val_loss), "val_loss_mean": ml, "val_loss_std": sl, "val_bpb_mean": mb,
            "val_bpb_std": sb, "text": f"{mb:.5f} ± {sb:.5f} bpb, {ml:.5f} ± {sl:.5f} nats (n={len(val_loss)})"}


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x={x} outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df (real, > 0) degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def welch_less(new: Sequence[float], ref: Sequence[float]) -> dict:
    """One-sided Welch test of mean(new) < mean(ref): t, Welch-Satterthwaite df, p."""
    if len(new) < 2 or len(ref) < 2:
        raise ValueError(f"welch_less needs >= 2 values per group (got {len(new)} and {len(ref)} seeds)")
    m1, s1 = mean_std(new)
    m2, s2 = mean_std(ref)
    v1, v2 = s1 * s1 / len(new), s2 * s2 / len(ref)
    if v1 + v2 == 0:
        return {"t": -math.inf if m1 < m2 else math.inf, "df": float("nan"), "p": 0.0 if m1 < m2 else 1.0}
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (len(new) - 1) + v2 * v2 / (len(ref) - 1))
    return {"t": t, "df": df, "p": t_cdf(t, df)}


def verdict(new_nats: Sequence[float], ref_nats: Sequence[float]) -> dict:
    """Both rules on per-seed val_loss (nats); `text` states which rule passed and why."""
    w = welch_less(new_nats, ref_nats)
    delta = mean_std(ref_nats)[0] - mean_std(new_nats)[0]  # > 0: the new run is better
    record = delta >= RECORD_DELTA_NATS and w["p"] < RECORD_P
    progression = delta > 0 and w["p"] < PROGRESSION_P
    text = (f"improvement {delta:+.5f} nats, Welch t={w['t']:.3f} df={w['df']:.2f} one-sided p={w['p']:.4g}: "
            + ("RECORD (>= 0.005 nats at p < 0.01)" if record else
               "progression only (p < 0.25; the record rule needs >= 0.005 nats at p < 0.01)"
               if progression else "not significant (neither p < 0.25 progression nor the record rule)"))
    return {**w, "delta_nats": delta, "record": record, "progression": progression,
            "rules": {"record": f">= {RECORD_DELTA_NATS} nats at p < {RECORD_P}",
                      "progression": f"p < {PROGRESSION_P}"}, "text": text}
