"""Byte accounting against the challenge cap: compressed weights + the code that ships with them.

The challenge counts the submission's code bytes plus the compressed model bytes against 16,000,000
(decimal). The code that would ship is the core package: config, the small shared modules, and the
data/model/train/compress/eval subpackages; the lab (experiments, plots) and the CLI front end do
not ship. Sizes are taken from the installed package, so they match what an export would copy.
An exported single-file script (lab/export.py) sets SHIPPED_FILE to its own path: from then on the
counted code bytes are the bytes of that file, the one that ships, and nothing else.
"""
from __future__ import annotations

from pathlib import Path

import loopgolf
from loopgolf.config import BUDGET_BYTES

SHIPPED_FILE: str | None = None  # set by an exported train_gpt.py to its own path

# Paths relative to the package directory (Path.glob patterns); missing files are skipped.
CORE_MODULES: tuple[str, ...] = (
    "config.py",
    "config_fields.py",
    "config_eval.py",
    "config_variants.py",
    "dist.py",
    "metrics.py",
    "pipeline.py",
    "run_phases.py",
    "data/**/*.py",
    "model/**/*.py",
    "train/**/*.py",
    "compress/**/*.py",
    "eval/**/*.py",
)


def package_root() -> Path:
    return Path(loopgolf.__file__).resolve().parent


def core_files(root: Path | None = None) -> list[Path]:
    """The existing source files matched by CORE_MODULES, sorted and without duplicates."""
    root = package_root() if root is None else Path(root)
    found: set[Path] = set()
    for pattern in CORE_MODULES:
        found.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(found)


def file_bytes(path: str | Path) -> int:
    """Counted code bytes of a shipped file: its size on disk (the challenge counts the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such code file; export it with `loopgolf export`")
    return path.stat().st_size


def code_bytes(root: Path | None = None) -> int:
    """Counted code bytes: the exported file when running from one (SHIPPED_FILE), else the total
    size of the core source files that would ship in a submission."""
    if root is None and SHIPPED_FILE is not None:
        return file_bytes(SHIPPED_FILE)
    return sum(p.stat().st_size for p in core_files(root))


def budget_report(model_bytes: int, code_bytes: int, cap: int = BUDGET_BYTES) -> dict:
    total = int(model_bytes) + int(code_bytes)
    return {"model_bytes": int(model_bytes), "code_bytes": int(code_bytes), "total_bytes": total,
            "cap": int(cap), "headroom": int(cap) - total, "fits": total <= cap}


def format_budget(report: dict) -> str:
    """One line, e.g. 'artifact 12,345,678 B + code 98,765 B = 12,444,443 B of 16,000,000 (fits,
    3,555,557 B to spare)'."""
    r = report
    verdict = (f"fits, {r['headroom']:,} B to spare" if r["fits"]
               else f"OVER by {-r['headroom']:,} B")
    return (f"artifact {r['model_bytes']:,} B + code {r['code_bytes']:,} B = "
            f"{r['total_bytes']:,} B of {r['cap']:,} ({verdict})")
