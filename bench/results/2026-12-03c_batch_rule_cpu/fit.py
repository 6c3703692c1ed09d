"""Fit B* = C * D^ALPHA to a fixed-wall-clock batch sweep (results lines from sweep_micro2.sh).

Per budget: a parabola in log2(batch) through the three best runs gives the best batch B*; D is the
tokens that budget saw (mean tokens/s of those three runs x budget). Two budgets give ALPHA and C.
usage: python fit.py results_micro2.txt
"""
import math
import re
import sys

import numpy as np

runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"m2_b(\d+)_t(\d+) rc=0 .* tok/s ([\d.]+) prequant [\d.]+ bpb ([\d.]+)", line)
    if m:
        budget, batch, tok_s, bpb = int(m[1]), int(m[2]), float(m[3]), float(m[4])
        runs.setdefault(budget, []).append((batch, tok_s, bpb))
best = {}
for budget, rows in sorted(runs.items()):
    rows.sort()
    i = min(range(len(rows)), key=lambda j: rows[j][2])
    i = min(max(i, 1), len(rows) - 2)  # three points around the best
    pts = rows[i - 1:i + 2]
    x = np.log2([r[0] for r in pts])
    a, b, _ = np.polyfit(x, [r[2] for r in pts], 2)
    b_star = 2 ** (-b / (2 * a)) if a > 0 else pts[1][0]
    d = budget * float(np.mean([r[1] for r in pts]))
    best[budget] = (b_star, d)
    print(f"budget {budget} s: " + ", ".join(f"{r[0]}: {r[2]:.4f} ({r[1]:.0f} tok/s)" for r in rows)
          + f"  -> B* {b_star:.0f} tokens, D {d:.0f} tokens")
(b1, d1), (b2, d2) = (best[k] for k in sorted(best)[:2])
alpha = math.log(b2 / b1) / math.log(d2 / d1)
c = b1 / d1 ** alpha
print(f"ALPHA = {alpha:.3f}, C = {c:.4g}  (B* = C * D^ALPHA)")
for d in (d1, d2, 6.8e8, 1.35e9):
    print(f"  D {d:.3g} tokens -> B* {c * d ** alpha:,.0f}")
