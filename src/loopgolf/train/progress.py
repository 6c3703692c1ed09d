"""What a person watching the training sees: a tqdm bar on a terminal, plain lines elsewhere.

On a TTY (stderr), one bar over the run's progress fraction shows the step, the loss, tokens per
second and the ETA, and the per-step `train` lines stay in train.log / metrics.jsonl only. Piped to a
file or in CI, there is no bar and the `train step:N loss:...` lines go to the console as before.
"""
from __future__ import annotations

import shutil
import sys

_UNITS = 1000  # bar resolution: one unit = 0.1 % of the run


class TrainProgress:
    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self._bar = None
        self._done = 0

    def update(self, frac: float, step: int, loss: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            # a pty without a size reports 0 x 0, and tqdm then hides the bar: fall back to 100 x 20
            size = shutil.get_terminal_size((100, 20))
            self._bar = tqdm(total=_UNITS, file=self.stream, desc="train", unit="‰", ncols=size.columns,
                             nrows=size.lines,
                             bar_format="{desc} {percentage:3.0f}%|{bar}|{postfix} [{elapsed}<{remaining}]")
        target = min(_UNITS, int(frac * _UNITS))
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target
        self._bar.set_postfix_str(f"step {step} loss {loss:.4f} {tokens_per_s:,.0f} tok/s", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
