"""torch.compile for training, with persistent caches and a count of what was compiled.

A compile warm-up is three caches deep: AOTAutograd's (the joint forward/backward graph), inductor's
FX-graph cache (the generated kernels of each graph) and Triton's (the compiled binaries). All three
are on by default in recent torch, but they live under /tmp/torchinductor_$USER, which containers and
many clusters wipe between jobs. `compile_model` points them at `train.compile_cache_dir` (default
~/.cache/loopgolf/compile) unless the user already set TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR, so
a second run of the same preset on the same machine only re-traces Python (dynamo) and loads kernels.

`CompileStats` reads torch's counters around a block: graphs compiled, cache hits and misses. The
trainer takes one reading over the warm-up and one over the timed loop; a non-zero `graphs` in the
loop means a recompile happened on the clock, which result.json reports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from loopgolf.config import TrainConfig


def configure_caches(cache_dir: str, sdpa_backend: str = "auto") -> str:
    """Persistent compile caches under cache_dir (unless the environment names its own); returns
    the inductor cache directory in use. A forced SDPA backend gets its own subfolder: the cache
    key does not cover the backend flags, and a cuDNN graph was served to a flash run
    (bench/results/2026-12-01_profile_h200)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir, default_cache_dir

    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    if cache_dir:
        root = Path(cache_dir).expanduser()
        if sdpa_backend != "auto":
            root = root / f"sdpa-{sdpa_backend}"
        # importing inductor writes its default into TORCHINDUCTOR_CACHE_DIR, so only a value other
        # than that default counts as the user's own choice
        current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
        os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    return inductor_cache_dir()


def select_sdpa_backend(name: str) -> None:
    """Leave only the named SDPA kernel enabled on CUDA ("auto": torch's own priority order, which on
    Hopper with torch 2.11 picks cuDNN's flash attention: bench/results/2026-12-01_profile_h200)."""
    if name == "auto":
        return
    torch.backends.cuda.enable_flash_sdp(name == "flash")
    torch.backends.cuda.enable_cudnn_sdp(name == "cudnn")
    torch.backends.cuda.enable_mem_efficient_sdp(name == "efficient")
    torch.backends.cuda.enable_math_sdp(False)


def compile_model(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The training graph: whole-model, static shapes, the configured mode and kernel choices (call
    configure_caches first for persistent caches)."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = cfg.compile_tuning
    select_sdpa_backend(cfg.sdpa_backend)
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    return torch.compile(model, dynamic=False, mode=mode)


_KEYS = {  # torch._dynamo.utils.counters[group][key] -> our name
    ("stats", "unique_graphs"): "graphs",
    ("inductor", "fxgraph_cache_hit"): "fx_cache_hits",
    ("inductor", "fxgraph_cache_miss"): "fx_cache_misses",
    ("aot_autograd", "autograd_cache_hit"): "aot_cache_hits",
    ("aot_autograd", "autograd_cache_miss"): "aot_cache_misses",
}


def _read() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {name: int(counters[group][key]) for (group, key), name in _KEYS.items()}


@dataclass
class CompileStats:
    """Counter deltas between start() and stop()."""

    start_values: dict | None = None
    delta: dict | None = None

    def start(self) -> "CompileStats":
        self.start_values = _read()
        return self

    def stop(self) -> dict[str, int]:
        now = _read()
        self.delta = {k: now[k] - self.start_values[k] for k in now}
        return self.delta
