"""Budget accounting: which files count as shipped code, and the one-line verdict."""
from __future__ import annotations

from pathlib import Path

import loopgolf
from loopgolf.compress.budget import (
    CORE_MODULES,
    budget_report,
    code_bytes,
    core_files,
    format_budget,
)
from loopgolf.config import BUDGET_BYTES


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_core_file_selection(tmp_path: Path) -> None:
    make_tree(tmp_path, {
        "__init__.py": "x" * 3, "config.py": "x" * 10, "metrics.py": "x" * 20, "cli.py": "x" * 999,
        "__main__.py": "x" * 999, "lab/sweep.py": "x" * 999, "data/loader.py": "x" * 30,
        "data/sub/deep.py": "x" * 40, "data/notes.txt": "x" * 999, "model/gpt.py": "x" * 50,
        "compress/quant.py": "x" * 60, "eval/bpb.py": "x" * 70,
    })
    rel = [p.relative_to(tmp_path).as_posix() for p in core_files(tmp_path)]
    assert rel == ["compress/quant.py", "config.py", "data/loader.py", "data/sub/deep.py",
                   "eval/bpb.py", "metrics.py", "model/gpt.py"]
    assert code_bytes(tmp_path) == 10 + 20 + 30 + 40 + 50 + 60 + 70


def test_installed_package_counts() -> None:
    root = Path(loopgolf.__file__).resolve().parent
    files = core_files()
    assert root / "config.py" in files and root / "compress" / "budget.py" in files
    assert not any(p.name in ("cli.py", "__main__.py") and p.parent == root for p in files)
    assert not any("lab" in p.relative_to(root).parts for p in files)
    assert code_bytes() == sum(p.stat().st_size for p in files) > 0
    assert "config.py" in CORE_MODULES


def test_budget_report_and_line() -> None:
    r = budget_report(12_345_678, 98_765)
    assert r == {"model_bytes": 12_345_678, "code_bytes": 98_765, "total_bytes": 12_444_443,
                 "cap": BUDGET_BYTES, "headroom": 3_555_557, "fits": True}
    assert format_budget(r) == ("artifact 12,345,678 B + code 98,765 B = 12,444,443 B of "
                                "16,000,000 (fits, 3,555,557 B to spare)")
    exact = budget_report(15_900_000, 100_000)
    assert exact["fits"] and exact["headroom"] == 0
    over = budget_report(15_950_000, 60_000)
    assert not over["fits"] and over["headroom"] == -10_000
    assert format_budget(over).endswith("of 16,000,000 (OVER by 10,000 B)")
    assert budget_report(10, 5, cap=12)["fits"] is False


def test_shipped_file_is_what_counts(tmp_path: Path, monkeypatch) -> None:
    from loopgolf.compress import budget

    f = tmp_path / "train_gpt.py"
    f.write_bytes(b"x" * 1234)
    assert budget.file_bytes(f) == 1234
    monkeypatch.setattr(budget, "SHIPPED_FILE", str(f))
    assert budget.code_bytes() == 1234
    assert budget.code_bytes(tmp_path) == 0  # an explicit root counts that tree's core files
    try:
        budget.file_bytes(tmp_path / "missing.py")
    except FileNotFoundError as e:
        assert "missing.py" in str(e) and "loopgolf export" in str(e)
    else:
        raise AssertionError("a missing code file must be refused")
