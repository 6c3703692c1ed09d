"""Compile caches point at the configured directory; CompileStats counts the graphs compiled."""
import torch

from loopgolf.config import TrainConfig
from loopgolf.train.compile_cache import CompileStats, compile_model, configure_caches


def test_caches_go_under_the_configured_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    used = configure_caches(str(tmp_path / "cc"))
    assert used == str(tmp_path / "cc" / "inductor")
    import os

    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cc" / "triton")


def test_a_forced_sdpa_backend_gets_its_own_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert configure_caches(str(tmp_path), "flash") == str(tmp_path / "sdpa-flash" / "inductor")


def test_a_directory_the_user_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert configure_caches(str(tmp_path / "cc")) == str(tmp_path / "mine")


def test_stats_count_a_new_graph_once():
    def f(x):
        return torch.sin(x) * 2 + 1

    g = torch.compile(f, backend="eager")
    x = torch.randn(5)
    s = CompileStats().start()
    g(x)
    first = s.stop()
    s = CompileStats().start()
    g(x)
    again = s.stop()
    assert first["graphs"] == 1
    assert again["graphs"] == 0


def test_compile_model_passes_the_mode():
    m = torch.nn.Linear(3, 3)
    c = compile_model(m, TrainConfig(compile_mode="max-autotune-no-cudagraphs"))
    assert isinstance(c, torch._dynamo.eval_frame.OptimizedModule)
    assert c._orig_mod is m


def test_sdpa_backend_leaves_only_the_named_kernel(monkeypatch):
    from loopgolf.train.compile_cache import select_sdpa_backend

    b = torch.backends.cuda
    before = (b.flash_sdp_enabled(), b.cudnn_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled())
    try:
        select_sdpa_backend("flash")
        assert b.flash_sdp_enabled() and not b.cudnn_sdp_enabled() and not b.mem_efficient_sdp_enabled()
        assert not b.math_sdp_enabled()
        select_sdpa_backend("auto")  # leaves the flags as they are
        assert b.flash_sdp_enabled() and not b.cudnn_sdp_enabled()
    finally:
        b.enable_flash_sdp(before[0]); b.enable_cudnn_sdp(before[1])
        b.enable_mem_efficient_sdp(before[2]); b.enable_math_sdp(before[3])


def test_compile_tuning_sets_inductors_flag():
    import torch._inductor.config as inductor_config

    try:
        compile_model(torch.nn.Linear(2, 2), TrainConfig(compile_tuning=True))
        assert inductor_config.coordinate_descent_tuning is True
    finally:
        inductor_config.coordinate_descent_tuning = False
