"""Run logging: a human-readable log, machine-readable JSONL, and the run's provenance header.

Rank 0 writes; other ranks' calls are no-ops. Console and `train.log` lines are grep-friendly
`key:value` pairs (the challenge's style), `metrics.jsonl` holds the same records for scripts; bulky
records (the full config) go to the files only (`console=False`).
`provenance()` fingerprints the code (SHA-256 over the package's .py files) and the environment,
so a log can be matched to the exact code that produced it.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def code_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(p.relative_to(PACKAGE_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def provenance() -> dict:
    import numpy
    import torch

    from loopgolf import __version__

    env = {
        "loopgolf": __version__,
        "code_sha256": code_hash(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "argv": sys.argv,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import sentencepiece

        env["sentencepiece"] = sentencepiece.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e-3 or abs(v) >= 1e6 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


class Logger:
    """`log(event, **fields)` -> console line, train.log line and one JSONL record."""

    def __init__(self, run_dir: Path | None, enabled: bool = True, echo: bool = True):
        self.enabled = enabled
        self.echo = echo
        self.run_dir = run_dir
        self._text = self._jsonl = None
        if enabled and run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._text = open(run_dir / "train.log", "a", encoding="utf-8")
            self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, event: str, console: bool = True, **fields) -> None:
        """`console=False` keeps the line out of the terminal (train.log and JSONL still get it)."""
        if not self.enabled:
            return
        line = " ".join([event] + [f"{k}:{_fmt(v)}" for k, v in fields.items()])
        self.text(line, console=console)
        if self._jsonl:
            record = {"event": event, "t": round(time.time(), 3), **fields}
            self._jsonl.write(json.dumps(record, default=_plain) + "\n")
            self._jsonl.flush()

    def text(self, line: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if self.echo and console:
            print(line, flush=True)
        if self._text:
            self._text.write(line + "\n")
            self._text.flush()

    def close(self) -> None:
        for f in (self._text, self._jsonl):
            if f:
                f.close()
        self._text = self._jsonl = None


def _plain(v):
    """numpy scalars and 0-d tensors as Python numbers (json cannot write them); anything else as text."""
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else str(v)
