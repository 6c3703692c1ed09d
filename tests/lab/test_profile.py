"""`loopgolf profile`: kernel categories by name, and a CPU run that writes its tables."""
import json

from loopgolf.cli import main
from loopgolf.lab.profile import categorize


def test_kernel_names_fall_in_their_categories():
    # names as torch.profiler reports them on H100/H200 (cuBLAS/nvjet, FA2 via SDPA, inductor, fused Adam)
    assert categorize("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN") == "matmul"
    assert categorize("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert categorize("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert categorize("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "fused_reduction"
    assert categorize("triton_per_fused_add_mul_sum_3") == "fused_reduction"
    assert categorize("triton_poi_fused_mul_relu_pow_5") == "fused_pointwise"
    assert categorize("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert categorize("void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*)") == "attention"
    assert categorize("Memcpy HtoD (Pinned -> Device)") == "copy_fill"
    assert categorize("aten::mm") == "matmul"
    assert categorize("something_unheard_of") == "other"


def test_idle_gaps_counts_uncovered_time_once_and_names_both_sides():
    from loopgolf.lab.profile_pipeline import gap_markdown, idle_gaps

    # two steps; b overlaps a (another stream), then a 100 µs gap before c, a 10 µs gap before d
    ivs = [("a", 0.0, 50.0), ("b", 40.0, 60.0), ("c", 160.0, 200.0), ("d", 210.0, 300.0),
           ("a", 1000.0, 1050.0), ("c", 1150.0, 1200.0)]
    g = idle_gaps(ivs, steps=2, min_gap_us=20.0)
    assert g["idle_ms_per_step"] == round((100 + 10 + 700 + 100) / 1000 / 2, 3)
    assert g["span_ms_per_step"] == 0.6  # 0 .. 1200 µs over 2 steps
    assert g["gaps_over_min"] == 3  # 100 (b->c), 700 (d->a), 100 (a->c); the 10 µs one is below the floor
    top = {(r["after"], r["before"]): r for r in g["top"]}
    assert top[("d", "a")]["ms_per_step"] == 0.35 and top[("d", "a")]["max_us"] == 700.0
    assert top[("b", "c")]["gaps_per_step"] == 0.5  # b ends last before the gap, not a
    assert g["top"][0]["after"] == "d"  # largest total first
    assert "| idle after kernel |" in "\n".join(gap_markdown(g))
    assert idle_gaps([], steps=1)["idle_ms_per_step"] == 0.0 and gap_markdown(idle_gaps([], 1)) == []
