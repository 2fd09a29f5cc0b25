"""`make bench` smoke runs on CPU: the JSON fields exist and hold sane values (no timing assertions)."""
from __future__ import annotations

import torch

from bench.knn import run as knn_bench
from bench.pretrain_step import bench_config


def test_pretrain_step_bench_reports_every_field():
    result = bench_config("debug", torch.device("cpu"), warmup=1, steps=1, variant="baseline")
    assert result["losses_finite"] and result["img_per_s"] > 0 and result["gflop_per_image"] > 0
    assert result["encoder_bound_img_per_s"] > 0 and result["ratio_to_encoder_bound"] > 0
    assert result["mfu"] is None and result["peak_memory_gib"] is None  # CPU: no peak FLOPs or CUDA memory


def test_knn_bench_times_each_available_backend():
    report = knn_bench("tiny", repeats=1)
    assert report["bank"] == 5000 and {r["backend"] for r in report["results"]} >= {"torch"}
    assert all(r["seconds_best"] > 0 for r in report["results"])


def test_augmentation_bench_runs_every_path():
    from bench.augment import PATHS, measure

    results = [measure(path, 32, 0, 8, 2, torch.device("cpu"), source_size=(48, 40)) for path in PATHS]
    assert [r["path"] for r in results] == list(PATHS) and all(r["img_per_s"] > 0 for r in results)


def test_step_profile_splits_the_step_into_categories():
    result = bench_config("debug", torch.device("cpu"), warmup=1, steps=1, variant="batched", with_bound=False,
                          profiled_steps=1)
    profile = result["profile"]
    shares = [c["share"] for c in profile["categories"].values()]
    assert abs(sum(shares) - 1) < 1e-6 and profile["kernel_ms_per_step"] > 0 and profile["wall_ms_per_step"] > 0
    assert "matmul" in profile["categories"] and profile["top_kernels"][0]["ms_per_step"] > 0


def test_kernel_names_fall_into_their_categories():
    from bench.step_profile import category_of

    assert category_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert category_of("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNN") == "matmul"
    assert category_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert category_of("triton_per_fused_add_native_layer_norm_3") == "compiled_fused"
    assert category_of("triton_poi_fused__to_copy_convert_element_type_7") == "compiled_fused"
    assert category_of("void cudnn::cnn::conv2d_grouped_direct_kernel<float>") == "convolution"
    assert category_of("void implicit_convolve_sgemm<__nv_bfloat16, __nv_bfloat16, 128, 5, 5>") == "convolution"
    assert category_of("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>") \
        == "normalization"
    assert category_of("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer_and_ema"
    assert category_of("Memcpy HtoD (Pageable -> Device)") == "memory"
    assert category_of("ncclDevKernel_AllGather_RING_LL") == "communication"


def test_bench_measures_each_config_in_its_own_process(tmp_path):
    import json
    import subprocess
    import sys

    output = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "bench.pretrain_step", "--configs", "debug,debug", "--variants", "batched",
                    "--warmup", "1", "--steps", "1", "--output", str(output)], check=True, capture_output=True)
    results = json.loads(output.read_text())["results"]
    assert [r["config"] for r in results] == ["debug", "debug"] and all(r["compiled_graphs"] == 0 for r in results)


def test_augmentation_bench_command_writes_its_json(tmp_path):
    import json
    import subprocess
    import sys

    output = tmp_path / "augment.json"
    subprocess.run([sys.executable, "-m", "bench.augment", "--size", "32", "--batch", "8", "--batches", "2",
                    "--workers", "0", "--source-size", "60x40", "--paths", "pil,gpu_decode", "--stages",
                    "--output", str(output)], check=True, capture_output=True)
    results = json.loads(output.read_text())["results"]
    assert [r["path"] for r in results] == ["pil", "gpu_decode", "stages"]
    assert results[-1]["device_jpeg_decode"] > 0 and results[0]["img_per_s"] > 0
