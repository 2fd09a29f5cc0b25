"""Pretraining step benchmark (`make bench`): JSON with, per config, s/step, img/s, MFU, peak memory
and, measured in the same run, the plain timm encoder-only bound batch / (2 x fwd+bwd + 3 x fwd).

    python -m bench.pretrain_step                        # the issue's GPU configs on a GPU, a tiny one on CPU
    python -m bench.pretrain_step --configs vit_s16_224 --variants batched,compiled --profile 3 --output runs/bench/pretrain.json

Variants (VARIANTS): baseline (one encoder call per view, eager), batched (views batched, eager),
compiled (batched + torch.compile: the preset default), compiled_cudagraphs, checkpointed.
`--profile N` adds a kernel-level profile of N steps per result (pretrain/step_profile.py).

Synthetic input already on the device: this measures the step, not the input pipeline. The step is
`pretrain.train.training_step`, the same function the training loop runs (two views, m = 2).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.config import apply_overrides
from common.runtime import autocast, resolve_precision
from bench.timing import timed
from common.vit import build_vit
from pretrain.configs import preset
from pretrain.model import PatchMixModel
from bench.step_profile import profile_steps
from pretrain.train import build_optimizer, training_step


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    batch: int  # per device
    published_h200_img_per_s: float | None  # recipes.md, "Measured anchors"


CONFIGS = {
    "vit_s16_224": BenchConfig("imagenet_vit_s16_300ep_official", 128, 1263.0),
    "vit_s2_32": BenchConfig("cifar10_vit_s2_800ep_official", 256, 1509.0),
    "vit_t2_32": BenchConfig("cifar10_vit_t2_800ep_official", 512, 2911.0),
    "vit_b16_224": BenchConfig("imagenet_vit_b16_300ep_official", 128, 814.0),
    "vit_b2_32": BenchConfig("cifar10_vit_b2_800ep_official", 512, 712.0),
    "debug": BenchConfig("debug_cpu", 32, None),
}
GPU_DEFAULT = ("vit_s16_224", "vit_s2_32", "vit_t2_32", "vit_b16_224", "vit_b2_32")
# Each speed switch of ModelConfig, measured against the one-call-per-view baseline in the same run.
VARIANTS = {
    "baseline": ["model.batch_views=false", "model.compile=false"],
    "batched": ["model.batch_views=true", "model.compile=false"],
    "compiled": ["model.batch_views=true", "model.compile=true"],
    "compiled_cudagraphs": ["model.batch_views=true", "model.compile=true", "model.compile_mode=reduce-overhead"],
    "checkpointed": ["model.batch_views=true", "model.compile=false", "model.grad_checkpointing=true"],
}
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense tensor-core peaks


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def encoder_bound(config, batch: int, device: torch.device, precision: torch.dtype, warmup: int,
                  repeats: int) -> dict:
    """Plain timm ViT of the same size, eager: the work a PatchMix step cannot avoid is two
    forward+backward passes (queries) and three forward passes (keys)."""
    model = build_vit(config.model.arch, config.model.patch_size, config.model.image_size,
                      config.model.num_heads).to(device)
    images = torch.randn(batch, 3, config.model.image_size, config.model.image_size, device=device)

    def forward_backward():
        with autocast(device, precision):
            output = model(images)
        output.float().sum().backward()

    def forward():
        with torch.no_grad(), autocast(device, precision):
            model(images)

    seconds_forward_backward = timed(forward_backward, device, warmup, repeats)
    seconds_forward = timed(forward, device, warmup, repeats)
    bound = batch / (2 * seconds_forward_backward + 3 * seconds_forward)
    return {"encoder_fwd_bwd_ms": 1e3 * seconds_forward_backward, "encoder_fwd_ms": 1e3 * seconds_forward,
            "encoder_bound_img_per_s": bound}


def _measure_step(config, batch: int, device: torch.device, warmup: int, steps: int, profiled_steps: int = 0) -> dict:
    """Time `training_step` on synthetic views already on the device; FLOPs from one more step;
    with `profiled_steps`, a kernel-level profile of that many more (pretrain/step_profile.py)."""
    precision = resolve_precision(config.run.precision, device)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).to(device)
    optimizer = build_optimizer(model, config.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    size = config.model.image_size
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
    counter, losses = {"step": 0}, []

    def step():
        loss, *_ = training_step(model, model, optimizer, scaler, views, config, counter["step"], 1000, precision)
        counter["step"] += 1
        losses.append(loss.detach())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, warmup, steps)
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # Graphs dynamo compiled while timing: 0 means the compiled variants ran eagerly.
    compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    measured = {"precision": str(precision).replace("torch.", ""), "seconds": seconds, "peak_memory_gib": peak_memory,
                "compiled_graphs": compiled_graphs}
    if profiled_steps:
        measured["profile"] = profile_steps(step, device, profiled_steps)
    # Count FLOPs with compiled code run eagerly (same FLOPs): tracing compiled frames under a
    # dispatch mode would leave dynamo's cache for ViT.forward unusable for the rest of the process.
    flop_counter = FlopCounterMode(display=False)
    with torch.compiler.set_stance("force_eager"), flop_counter:
        step()
    measured["flops"] = flop_counter.get_total_flops()
    measured["losses_finite"] = bool(torch.isfinite(torch.stack(losses)).all())
    return measured


def step_overrides(name: str, variant: str) -> list[str]:
    """What makes a preset the benchmarked step of config `name`: its per-device batch, two views
    mixed with m = 2, no local crops, the device's precision and the variant's speed switches. The
    end-to-end check (bench/end_to_end.py) trains with the same step, fed from files instead."""
    return [f"optim.batch_size={CONFIGS[name].batch}", "mix.num_mixed=2", "augment.num_local_crops=0",
            "run.precision=auto", *VARIANTS[variant]]


def measured_matmul_flops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one square matmul on `device` (bf16 on a GPU, fp32 on a CPU): the reference for MFU
    where no published peak is known (a CPU smoke run, an unlisted GPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    left, right = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    seconds = timed(lambda: left @ right, device, warmup=1, repeats=repeats)
    return 2 * size**3 / seconds


def bench_config(name: str, device: torch.device, warmup: int, steps: int, variant: str = "batched",
                 with_bound: bool = True, profiled_steps: int = 0) -> dict:
    spec = CONFIGS[name]
    torch._dynamo.reset()  # each config compiles afresh: no cache entries or recompile budget carried over
    torch._dynamo.utils.counters.clear()
    # The step alone: synthetic views already on the device, so no augmentation inside the step.
    config = apply_overrides(preset(spec.preset), [*step_overrides(name, variant), "augment.gpu=false",
                                                   "augment.gpu_decode=false", f"run.device={device.type}"])
    measured = _measure_step(config, spec.batch, device, warmup, steps, profiled_steps)  # frees its model on return
    if device.type == "cuda":
        torch.cuda.empty_cache()
    seconds, flops, peak = measured["seconds"], measured["flops"], peak_flops(device)
    img_per_s = spec.batch / seconds
    result = {
        "config": name, "variant": variant, "preset": spec.preset, "batch_per_device": spec.batch, "num_mixed": 2,
        "precision": measured["precision"], "momentum_encoder": config.model.momentum_encoder,
        "s_per_step": seconds, "img_per_s": img_per_s, "gflop_per_image": flops / spec.batch / 1e9,
        "mfu": (flops / seconds / peak) if peak else None, "peak_memory_gib": measured["peak_memory_gib"],
        "losses_finite": measured["losses_finite"], "compiled_graphs": measured["compiled_graphs"],
        "published_h200_img_per_s": spec.published_h200_img_per_s,
    }
    if with_bound:
        precision = resolve_precision(config.run.precision, device)
        result.update(encoder_bound(config, spec.batch, device, precision, warmup, max(steps // 2, 3)))
        result["ratio_to_encoder_bound"] = img_per_s / result["encoder_bound_img_per_s"]
    if "profile" in measured:
        result["profile"] = measured["profile"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pretrain_step")
    parser.add_argument("--configs", default="", help=f"comma-separated from {', '.join(CONFIGS)}")
    parser.add_argument("--warmup", type=int, default=0, help="0: 5 on GPU, 1 on CPU")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: 20 on GPU, 3 on CPU)")
    parser.add_argument("--variants", default="baseline,batched",
                        help=f"comma-separated from {', '.join(VARIANTS)} (each config x each variant)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile this many steps per result: kernel time by category, top kernels")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every config in this process (default: a fresh process per config)")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n in arguments.configs.replace(",", " ").split()] or (
        list(GPU_DEFAULT) if device.type == "cuda" else ["debug"])
    warmup = arguments.warmup or (5 if device.type == "cuda" else 1)
    steps = arguments.steps or (20 if device.type == "cuda" else 3)
    variants = arguments.variants.replace(",", " ").split()
    results = []
    if len(names) > 1 and not arguments.in_process:
        # A fresh process per config: compiled code, dynamo's caches and the allocator's state of one
        # config never touch the next one's numbers.
        for name in names:
            with tempfile.TemporaryDirectory() as folder:
                output = Path(folder) / "result.json"
                subprocess.run([sys.executable, "-m", "bench.pretrain_step", "--configs", name,
                                "--variants", ",".join(variants), "--warmup", str(warmup), "--steps", str(steps),
                                "--profile", str(arguments.profile), "--output", str(output)], check=True)
                results += json.loads(output.read_text())["results"]
    else:
        for name in names:
            for index, variant in enumerate(variants):
                # The plain-timm bound is measured once per config, with its first variant.
                results.append(bench_config(name, device, warmup, steps, variant, with_bound=index == 0,
                                            profiled_steps=arguments.profile))
                print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "pretrain_step", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "results": results}
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
