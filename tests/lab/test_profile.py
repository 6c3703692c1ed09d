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


def test_a_cpu_profile_writes_json_and_markdown(tmp_path):
    out = tmp_path / "prof"
    assert main(["profile", "--preset", "tiny", "--steps", "2", "--profile-steps", "1", "--out", str(out)]) == 0
    r = json.loads((out / "profile.json").read_text())
    assert r["preset"] == "tiny" and r["device"] == "cpu"
    assert len(r["stages"]) >= 1
    s = r["stages"][0]
    assert s["ms_per_step"] > 0
    assert set(s["phase_ms"]) == {"data", "forward_backward", "optimizer"}
    assert s["kernels"]["categories"].get("matmul", 0) > 0  # the aten::mm ops of the blocks
    assert "| category | ms/step |" in (out / "profile.md").read_text()
    pipe = s["pipeline"]  # back-to-back steps as training runs them; no allocator counters on CPU
    assert pipe["pipelined_ms_per_step"] > 0 and pipe["host_launch_ms"] > 0
    assert pipe["allocator_per_step"] == {}
    assert "pipelined (as training runs)" in (out / "profile.md").read_text()
