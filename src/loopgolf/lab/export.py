"""Single-file submission: a self-contained train_gpt.py for one resolved RunConfig, and its packed form.

The challenge ships one script whose bytes count against the cap. The exporter starts at
loopgolf.pipeline, follows every `import loopgolf...` / `from loopgolf... import ...` found by
parsing the sources (ast; lazy imports inside functions included), and embeds the reachable core
modules, dependencies first, with the resolved config baked in. Each module keeps its own namespace:
the script installs a small importer that serves `loopgolf.*` from the embedded sources, so the
package's import lines work unchanged and no name can collide, whatever the modules define at
export time; the installed package, if any, is never used. The packed form is the same script
compressed (lzma or brotli) and base85-encoded inside a two-line `exec` wrapper, as records (b)-(d)
ship. Running the script sets compress.budget.SHIPPED_FILE to itself, so the code bytes counted in
its result are the bytes of the file that ships.
"""
from __future__ import annotations

import ast
import base64
import lzma
from pathlib import Path

from loopgolf.compress.artifact import write_bytes_atomic
from loopgolf.compress.budget import CORE_MODULES, package_root
from loopgolf.config import RunConfig

ENTRY = "loopgolf.pipeline"
PACKED_CODECS = ("lzma", "brotli")

_RUNNER = '''

class _Embedded(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves loopgolf.* from SOURCES, ahead of any installed copy."""

    def find_spec(self, name, path=None, target=None):
        if name in SOURCES:
            return importlib.util.spec_from_loader(name, self, is_package=name in PACKAGES)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        tail = "/__init__.py" if name in PACKAGES else ".py"
        module.__file__ = "<train_gpt>/" + name.replace(".", "/") + tail
        exec(compile(SOURCES[name], module.__file__, "exec"), module.__dict__)


sys.meta_path.insert(0, _Embedded())


def main(argv=None):
    import argparse
    import json
    from pathlib import Path

    from loopgolf.compress import budget
    from loopgolf.config import RunConfig
    from loopgolf.pipeline import ARTIFACT_NAME, evaluate_artifact, train_and_compress, write_json

    budget.SHIPPED_FILE = SHIPPED
    ap = argparse.ArgumentParser(description="train -> artifact -> reload -> val_bpb")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--run-dir", default="run")
    args = ap.parse_args(argv)
    cfg = RunConfig.from_json(CONFIG).override(args.set).validate()
    run_dir = Path(args.run_dir)
    res = train_and_compress(cfg, run_dir)
    ev = evaluate_artifact(run_dir / ARTIFACT_NAME, cfg.data.val, cfg.data.tokenizer,
                           cfg.train.device)
    res.update(val_loss=ev["val_loss"], val_bpb=ev["val_bpb"], eval=ev,
               quant_gap_bpb=ev["val_bpb"] - res["val_bpb_prequant"])
    if "artifact_bytes" in res:
        write_json(run_dir / "result.json", {"name": cfg.name, **res})
    print("final " + json.dumps({k: res[k] for k in ("val_loss", "val_bpb", "code_bytes",
                                                     "total_bytes") if k in res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


class ExportError(ValueError):
    """The core modules cannot be flattened (an import outside them, a missing module)."""


def _module_file(root: Path, name: str) -> tuple[Path, bool] | None:
    """(source file, is package) of loopgolf module `name`, or None when there is none."""
    rel = Path(*name.split(".")[1:])
    pkg = root / rel / "__init__.py"
    if pkg.is_file():
        return pkg, True
    mod = (root / rel).with_suffix(".py") if name != "loopgolf" else root / "__init__.py"
    return (mod, name == "loopgolf") if mod.is_file() else None


def _imports(src: str, path: Path, root: Path, name: str, is_pkg: bool) -> list[str]:
    """loopgolf modules that module `name` imports anywhere, in source order (`from loopgolf
    import dist` counts loopgolf.dist when that is a module; relative imports are resolved)."""
    out: list[str] = []
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(src, filename=str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "loopgolf"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ExportError(f"{path}:{node.lineno}: relative import beyond loopgolf")
                anchor = ".".join(parts[:len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] != "loopgolf":
                continue
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names if _module_file(root, f"{base}.{a.name}")]
    return out


def collect_modules(root: Path | None = None, entry: str = ENTRY) -> dict[str, tuple[str, bool]]:
    """{module name: (source, is package)} of every module reachable from `entry`, parents
    before children and dependencies before dependents (deterministic)."""
    root = package_root() if root is None else Path(root)
    order: dict[str, tuple[str, bool]] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        found = _module_file(root, name)
        if found is None:
            raise ExportError(f"module {name} is imported but {root} has no source for it")
        visiting.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):  # a submodule import first runs its packages' __init__
            visit(".".join(parts[:i]))
        src = found[0].read_text(encoding="utf-8")
        for dep in _imports(src, found[0], root, name, found[1]):
            visit(dep)
        visiting.discard(name)
        order[name] = (src, found[1])

    visit(entry)
    core = {p.resolve() for pat in CORE_MODULES for p in root.glob(pat)}
    core |= {(d / "__init__.py").resolve() for p in list(core) for d in p.parents
             if d == root.resolve() or root.resolve() in d.parents}
    outside = [n for n in order if _module_file(root, n)[0].resolve() not in core]  # type: ignore[index]
    if outside:
        raise ExportError(f"{entry} imports modules that do not ship ({', '.join(outside)}); "
                          f"core code must not import the lab or the CLI")
    return order


def single_file_source(cfg: RunConfig, root: Path | None = None) -> str:
    """The plain train_gpt.py text for `cfg` (validated and baked in)."""
    cfg.validate()
    modules = collect_modules(root)
    lines = ['"""train_gpt.py: loopgolf single-file submission, generated by `loopgolf export`.',
             "", "Run: python train_gpt.py [--set section.field=value ...] [--run-dir DIR]",
             '"""', "import importlib.abc", "import importlib.util", "import sys", "",
             f"CONFIG = {cfg.to_json()!r}",
             f"PACKAGES = {sorted(n for n, (_, pkg) in modules.items() if pkg)!r}",
             "SOURCES = {"]
    lines += [f"    {name!r}: {src!r}," for name, (src, _) in modules.items()]
    lines += ["}", 'SHIPPED = __import__("os").path.abspath(globals().get("__file__", "train_gpt.py"))']
    return "\n".join(lines) + _RUNNER


def pack_source(source: str, codec: str = "lzma") -> str:
    """A two-line script that decompresses and runs `source` (base85 of lzma/brotli bytes)."""
    if codec == "lzma":
        blob = lzma.compress(source.encode(), format=lzma.FORMAT_RAW,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
        head = "import lzma,base64\nexec(lzma.decompress(base64.b85decode({!r}),format=lzma.FORMAT_RAW,filters=[{{'id':lzma.FILTER_LZMA2}}]))\n"
    elif codec == "brotli":
        import brotli

        blob = brotli.compress(source.encode(), quality=11)
        head = "import brotli,base64\nexec(brotli.decompress(base64.b85decode({!r})))\n"
    else:
        raise ExportError(f"packed codec {codec!r}: choose one of {', '.join(PACKED_CODECS)}")
    return head.format(base64.b85encode(blob).decode())


def packed_code_bytes(cfg: RunConfig, codec: str = "lzma") -> int:
    """Size of the packed train_gpt.py that would ship for `cfg`: the code bytes of its run."""
    return len(pack_source(single_file_source(cfg), codec).encode())


def export_single_file(cfg: RunConfig, out_path: str | Path, packed: bool,
                       codec: str = "lzma") -> Path:
    """Write train_gpt.py (plain, or packed with `codec`) atomically; its size is the code bytes."""
    source = single_file_source(cfg)
    text = pack_source(source, codec) if packed else source
    out = Path(out_path)
    write_bytes_atomic(out, text.encode())
    return out
