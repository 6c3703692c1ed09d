"""Guardrails for the package's shape: one-way imports, env reads at the edge, small files, mirror
tests, no pickle."""
import ast
from pathlib import Path

import loopgolf

PKG = Path(loopgolf.__file__).parent
# layer of each top-level unit; a module may import only from its own layer or lower ones
LAYERS = {
    "config": 0, "config_fields": 0, "config_eval": 0, "config_variants": 0, "dist": 1, "metrics": 1, "data": 2, "model": 2, "eval": 3, "compress": 3,
    "train": 4, "pipeline": 5, "run_phases": 5, "presets": 6, "presets_frontier": 6, "lab": 6, "cli": 7, "__main__": 8, "__init__": 0,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loopgolf"):
            yield node.module
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative import inside a package
            yield "loopgolf." + _unit(path) + ("." + node.module if node.module else "")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("loopgolf"):
                    yield a.name


def test_imports_flow_one_way():
    bad = []
    for path in PKG.rglob("*.py"):
        me = LAYERS[_unit(path)]
        for mod in _imports(path):
            parts = mod.split(".")
            if len(parts) < 2:
                continue
            other = LAYERS[parts[1]]
            if other > me:
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
    assert not bad, bad


def test_model_code_never_touches_distributed_or_env():
    for path in (PKG / "model").rglob("*.py"):
        text = path.read_text()
        assert "torch.distributed" not in text and "os.environ" not in text, path


def test_env_vars_read_only_at_the_edge():
    # compile_cache.py: torch finds its compile caches only through TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR
    allowed = {"dist.py", "config.py", "compile_cache.py"}
    readers = [p.name for p in PKG.rglob("*.py") if "os.environ" in p.read_text() or "getenv(" in p.read_text()]
    assert set(readers) <= allowed, readers


MAX_LINES = 450  # the core was refactored so that every concept's module fits well inside this


def test_files_stay_small():
    big = [(p.relative_to(PKG), n) for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, big


def test_every_module_has_a_mirror_test():
    """src/loopgolf/x/y.py is tested in tests/x/test_y.py (`__main__` only dispatches to the CLI)."""
    tests = Path(__file__).parent
    missing = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG)
        if p.name in ("__init__.py", "__main__.py"):
            continue
        if not (tests / rel.parent / f"test_{p.name}").is_file():
            missing.append(str(rel))
    assert not missing, missing


def test_no_pickle_loads():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                owner = getattr(node.func.value, "id", "")
                if owner == "pickle":
                    raise AssertionError(f"{path}: pickle.load")
                if owner == "torch":
                    kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                    assert kw.get("weights_only") is True, f"{path}: torch.load without weights_only=True"


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
               if p.name != "__init__.py" and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing
