"""Single-file export: module discovery by parsing, and the exported script reproducing the package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopgolf.lab.export import ExportError, collect_modules, export_single_file, pack_source
from loopgolf.pipeline import evaluate_artifact, train_and_compress
from loopgolf.presets import get_preset


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_discovery_follows_absolute_relative_and_lazy_imports(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "__init__.py": "", "config.py": "X = 1\n", "dist.py": "",
        "pipeline.py": "from loopgolf import dist\nfrom loopgolf.data.b import f\n"
                       "def g():\n    import loopgolf.model.m\n",
        "data/__init__.py": "", "data/a.py": "from loopgolf.config import X\n",
        "data/b.py": "from .a import X\nfrom . import a\ndef f():\n    return X\n",
        "model/__init__.py": "", "model/m.py": "", "model/unused.py": "", "lab/__init__.py": "", "lab/x.py": "",
    })
    assert list(collect_modules(root)) == [
        "loopgolf", "loopgolf.dist", "loopgolf.data", "loopgolf.config", "loopgolf.data.a",
        "loopgolf.data.b", "loopgolf.model", "loopgolf.model.m", "loopgolf.pipeline"]
    (root / "model" / "m.py").write_text("from loopgolf.lab import x\n")
    with pytest.raises(ExportError, match="do not ship.*loopgolf.lab"):
        collect_modules(root)
    (root / "model" / "m.py").write_text("import loopgolf.nothing\n")
    with pytest.raises(ExportError, match="loopgolf.nothing is imported but"):
        collect_modules(root)


def test_packed_wrappers_run_the_same_source(tmp_path: Path) -> None:
    src = "import sys\nprint('hello', __name__, len(sys.argv))\n"
    for codec in ("lzma", "brotli"):
        f = tmp_path / f"packed_{codec}.py"  # not {codec}.py: that would shadow the codec module
        f.write_text(pack_source(src, codec))
        out = subprocess.run([sys.executable, str(f), "a"], capture_output=True, text=True, check=True)
        assert out.stdout == "hello __main__ 2\n"
    with pytest.raises(ExportError, match="packed codec 'gzip'"):
        pack_source(src, "gzip")


def losses(run_dir: Path) -> list[float]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["event"] == "train"]


@pytest.mark.slow
def test_exported_file_reproduces_the_package(tiny_shards, tmp_path: Path) -> None:
    """The packed script (which runs the plain one) trains and scores like the package."""
    cfg = get_preset("tiny").override([
        f"data.train={tiny_shards['dir']}/*_train_*.bin", f"data.val={tiny_shards['dir']}/*_val_*.bin",
        f"data.tokenizer={tiny_shards['tokenizer']}", "train.device=cpu"]).validate()
    script = export_single_file(cfg, tmp_path / "sub" / "train_gpt.py", packed=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, script.name, "--run-dir", "run"], cwd=script.parent,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("final "))
    assert final["code_bytes"] == script.stat().st_size  # the shipped file is what counts

    ref_dir = tmp_path / "ref"
    train_and_compress(cfg, ref_dir)
    ref = evaluate_artifact(ref_dir / "model.lgz", cfg.data.val, cfg.data.tokenizer, "cpu")
    got, want = losses(script.parent / "run"), losses(ref_dir)
    assert len(got) == len(want) == cfg.train.max_steps
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4, (got, want)
    assert abs(final["val_bpb"] - ref["val_bpb"]) < 1e-4
    assert (script.parent / "run" / "model.lgz").read_bytes() == (ref_dir / "model.lgz").read_bytes() \
        or abs(final["val_loss"] - ref["val_loss"]) < 1e-4
