"""Checks that need a CUDA device (marked gpu; skipped with the reason where there is none)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.config import apply_overrides
from pretrain.configs import preset
from tests.tolerances import reordering_tolerance, vit_accumulated_terms

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_patch_mix_on_cuda_equals_cpu():
    from pretrain.patchmix import patch_mix

    images = torch.randn(16, 3, 32, 32)
    cpu, cpu_offsets = patch_mix(images, 3, 2, torch.Generator().manual_seed(4))
    gpu, gpu_offsets = patch_mix(images.cuda(), 3, 2, torch.Generator().manual_seed(4))
    assert torch.equal(gpu.cpu(), cpu) and torch.equal(gpu_offsets.cpu(), cpu_offsets)


def test_loss_on_cuda_matches_cpu_fp32_and_bf16():
    from pretrain.model import PatchMixModel
    from pretrain.methods.patchmix import patchmix_loss

    config = apply_overrides(preset("debug_cpu"), ["model.drop_path_rate=0.0"])
    torch.manual_seed(0)
    model = PatchMixModel(config.model)
    views = [torch.randn(32, 3, 32, 32) for _ in range(2)]
    cpu_loss, _ = patchmix_loss(model, model, views, config, torch.Generator().manual_seed(1))
    model = model.cuda()
    cuda_views = [v.cuda() for v in views]
    fp32_loss, _ = patchmix_loss(model, model, cuda_views, config, torch.Generator().manual_seed(1))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16_loss, _ = patchmix_loss(model, model, cuda_views, config, torch.Generator().manual_seed(1))
    model_config = config.model
    terms = vit_accumulated_terms(model_config.arch, model_config.image_size, model_config.patch_size, batch=64,
                                  head_widths=(model_config.projector_hidden_dim, model_config.output_dim,
                                               model_config.predictor_hidden_dim), backward=False)
    torch.testing.assert_close(fp32_loss.cpu(), cpu_loss, **reordering_tolerance(cpu_loss, terms))
    assert abs(bf16_loss.item() - cpu_loss.item()) / cpu_loss.item() < 2e-2


def test_knn_torch_backend_on_cuda_matches_cpu():
    from evaluate.knn import KnnConfig, search

    bank = torch.nn.functional.normalize(torch.randn(5000, 64), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(300, 64), dim=1)
    config = KnnConfig(half_precision=False, bank_chunk=1024)
    cpu_similarities, cpu_indices = search(bank, queries, 20, config, "torch")
    gpu_similarities, gpu_indices = search(bank.cuda(), queries.cuda(), 20, config, "torch")
    assert (gpu_indices.cpu() == cpu_indices).float().mean() > 0.999
    torch.testing.assert_close(gpu_similarities.cpu(), cpu_similarities,
                               **reordering_tolerance(cpu_similarities, accumulated_terms=64))  # 64-d dot products


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_runs_on_cuda(tmp_path, precision):
    from pretrain.train import main

    config = apply_overrides(preset("debug_cpu"), ["run.device=cuda", f"run.precision={precision}", "optim.epochs=2",
                                                   f"run.output_root={tmp_path}", "run.progress=false"])
    result = main(config)
    assert result["steps"] == 16 and result["skipped_steps"] >= 0
    assert torch.isfinite(torch.tensor(result["final_metrics"]["loss"]))
    from common.checkpoint import load_torch

    state = load_torch(Path(result["run_dir"]) / "checkpoints" / "checkpoint_00000016.pt")
    assert all(t.device.type == "cpu" for t in state["model"].values())  # a GPU checkpoint loads on a CPU


def test_fp16_skipped_steps_are_counted_and_abort_past_the_limit(tmp_path, monkeypatch):
    from pretrain import train
    from pretrain.methods import patchmix

    original = patchmix.patchmix_loss

    def overflowing(*args, **kwargs):  # a finite loss whose fp16 gradients overflow: the scaler skips
        loss, metrics = original(*args, **kwargs)
        return loss * 1e30, metrics

    monkeypatch.setattr(patchmix, "patchmix_loss", overflowing)
    config = apply_overrides(preset("debug_cpu"), ["run.device=cuda", "run.precision=fp16", "run.max_skipped_steps=1",
                                                   f"run.output_root={tmp_path}", "run.progress=false"])
    with pytest.raises(train.TrainingAborted, match="2 skipped fp16 steps"):
        train.main(config)


def test_batched_augmentation_on_cuda_matches_cpu():
    from pretrain.gpu_augment import augment, sample_parameters

    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    parameters = sample_parameters(16, 0.5, 0.2, torch.Generator().manual_seed(0))
    cpu = augment(images, parameters)
    gpu_parameters = type(parameters)(**{k: v.cuda() for k, v in vars(parameters).items()})
    gpu = augment(images.cuda(), gpu_parameters)
    torch.testing.assert_close(gpu.cpu(), cpu, **reordering_tolerance(cpu, 64 * 64 + 3 * 13 + 32))  # as the compiled test


def test_device_decode_on_cuda_matches_the_cpu_decode():
    """nvJPEG against libjpeg-turbo and the resampling matrices on CUDA against the CPU."""
    import io

    import numpy as np
    from PIL import Image

    from common.encoded_images import read_encoded
    from pretrain.device_decode import decode_views

    rng = np.random.default_rng(0)
    payloads = []
    for index in range(8):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)).resize((300 + 20 * index, 220))
        buffer = io.BytesIO()
        (coarse.convert("L") if index == 7 else coarse).save(buffer, format="JPEG", quality=90)
        payloads.append(read_encoded(buffer.getvalue()).data)
    boxes = torch.tensor([[[10, 20, 150, 200, index % 2], [0, 0, 220, 300, 1 - index % 2]] for index in range(8)])
    cpu = decode_views(payloads, boxes, [224, 96], torch.device("cpu"))
    cuda = decode_views(payloads, boxes, [224, 96], torch.device("cuda"))
    for expected, got in zip(cpu, cuda):
        difference = (got.cpu().int() - expected.int()).abs()
        assert difference.float().mean() < 1.0 and difference.max() <= 12  # IDCT and chroma upsampling differ


def test_compiled_encoders_keep_the_bf16_loss_and_gradients():
    """model.compile on CUDA in bf16 against the eager model: same loss and gradients within bf16 rounding."""
    from pretrain.model import PatchMixModel
    from pretrain.methods.patchmix import patchmix_loss

    results = []
    for compiled in (False, True):
        config = apply_overrides(preset("debug_cpu"), ["model.drop_path_rate=0.0",
                                                       f"model.compile={str(compiled).lower()}"])
        torch.manual_seed(0)
        model = PatchMixModel(config.model).cuda()
        views = [torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(v)).cuda() for v in range(2)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = patchmix_loss(model, model, views, config, torch.Generator().manual_seed(1))
        loss.backward()
        gradients = torch.cat([p.grad.flatten().float() for p in model.base_encoder.parameters() if p.grad is not None])
        results.append((loss.item(), gradients))
    (eager_loss, eager_gradients), (compiled_loss, compiled_gradients) = results
    assert abs(compiled_loss - eager_loss) / abs(eager_loss) < 1e-2
    relative = (compiled_gradients - eager_gradients).norm() / eager_gradients.norm()
    assert relative < 5e-2
