"""Evaluation recipes against the code they name (published PatchMix finetune, MAE's finetune and
linear probe), each against a computation written out here."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from common.datasets import DataConfig
from common.vit import build_vit
from evaluate.configs import LinearConfig
from evaluate.protocols import build_eval_config
from common.encoder import EncoderSpec, SourceConfig
from evaluate.finetune import (build_classifier, build_optimizer, build_scheduler, evaluation_transform,
                              finetune_transform)
from evaluate.linear import build_head
from evaluate.linear import build_optimizer as build_linear_optimizer
from tests.tolerances import reordering_tolerance


def _config(protocol: str, preset: str, dataset: str = "cifar10", arch: str = "vit_base"):
    size, patch = (32, 2) if dataset == "cifar10" else (224, 16)
    return build_eval_config(protocol, preset, EncoderSpec(arch, patch, size), DataConfig(dataset=dataset),
                             SourceConfig(run_dir="runs/x"))


def test_official_cifar_finetune_tests_on_the_raw_image():
    config = _config("finetune", "official").finetune
    assert config.test_transform == "raw"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    got = evaluation_transform(config, 32)(Image.fromarray(pixels))
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(got, expected)
    # ImageNet keeps Resize(256) + CenterCrop(224); the linear and kNN protocols keep 36 -> 32 on CIFAR.
    assert _config("finetune", "official", "imagenet").finetune.test_transform == "resize_crop"


def _scales(model, config) -> dict[str, float]:
    optimizer = build_optimizer(model, config, peak_lr=1e-3)
    scale_of = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    return {name: scale_of[id(p)] for name, p in model.named_parameters()}


def _classifier(config, arch="vit_debug"):
    encoder = build_vit(arch, 4, 32)
    session = SimpleNamespace(encoder=SimpleNamespace(build=lambda drop_path_rate=0.0: encoder), num_classes=10)
    return build_classifier(session, config)


def test_official_layer_decay_puts_the_final_norm_with_the_last_block():
    config = _config("finetune", "official").finetune
    scales = _scales(_classifier(config), config)
    depth = 2  # vit_debug: block i (0-based) has scale 0.75^(depth - i), the head 1
    assert scales["blocks.1.norm1.weight"] == pytest.approx(0.75)
    assert scales["norm.weight"] == pytest.approx(0.75) and scales["norm.bias"] == pytest.approx(0.75)
    assert scales["head.weight"] == pytest.approx(1.0)
    assert scales["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** depth)
    assert scales["patch_embed.proj.weight"] == pytest.approx(0.75 ** (depth + 1))


def test_cifar_randaugment_is_bicubic():
    transform = finetune_transform(_config("finetune", "official").finetune, 32)
    (rand_augment,) = [t for t in transform.transforms if type(t).__name__ == "RandAugment"]
    assert {op.kwargs["resample"] for op in rand_augment.ops} == {Image.BICUBIC}


def mae_learning_rate(epoch: float, peak: float, minimum: float, warmup: int, epochs: int) -> float:
    """MAE's util/lr_sched.adjust_learning_rate, written out (epoch is fractional, per iteration)."""
    if epoch < warmup:
        return peak * epoch / warmup
    return minimum + (peak - minimum) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_mae_finetune_schedule_pooling_and_head():
    config = _config("finetune", "mae_vit_b", "imagenet").finetune
    assert (config.layer_decay, config.warmup_epochs, config.min_lr, config.warmup_lr) == (0.65, 5, 1e-6, 0.0)
    config.epochs, steps_per_epoch, peak = 20, 7, 1e-3
    model = _classifier(config)
    optimizer = build_optimizer(model, config, peak_lr=peak)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    head_group = next(g for g in optimizer.param_groups if g["lr_scale"] == 1.0)
    for step in range(config.epochs * steps_per_epoch):
        scheduler.step_update(step)
        expected = mae_learning_rate(step / steps_per_epoch, peak, config.min_lr, config.warmup_epochs, config.epochs)
        assert head_group["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), step

    # Pooling: the mean of the patch tokens before any final norm, then a fresh LayerNorm, then the head.
    names = dict(model.named_parameters())
    assert "norm.weight" not in names and "fc_norm.weight" in names
    torch.testing.assert_close(names["fc_norm.weight"], torch.ones(model.embed_dim))
    model.eval()
    image = torch.randn(2, 3, 32, 32)
    tokens = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(image))))
    pooled = tokens[:, 1:].mean(dim=1)
    expected = model.head(torch.nn.functional.layer_norm(pooled, (model.embed_dim,), eps=1e-6))
    torch.testing.assert_close(model(image), expected)

    # Head: truncated normal weights of std 2e-5, zero bias (MAE's trunc_normal_ on timm's zero bias).
    big = _classifier(config, "vit_base")
    assert big.head.weight.std().item() == pytest.approx(2e-5, rel=0.05)
    assert torch.all(big.head.bias == 0)


def test_mae_linear_probe_preset():
    linear = _config("linear", "mae", "imagenet").linear
    assert (linear.epochs, linear.warmup_epochs, linear.batch_size, linear.base_lr) == (90, 10, 16384, 0.1)
    assert (linear.optimizer, linear.batchnorm, linear.weight_decay, linear.nesterov) == ("lars", True, 0.0, False)
    head = build_head(16, 4, linear.head_init_std, linear.batchnorm)
    norm = head[0]
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine and norm.eps == 1e-6


def mae_lars_step(parameters, states, lr, momentum=0.9, weight_decay=0.0, trust=0.001):
    """MAE's util/lars.LARS.step, written out: trust ratio on parameters with more than one dimension."""
    for parameter, state in zip(parameters, states):
        update = parameter.grad
        if parameter.ndim > 1:
            update = update + weight_decay * parameter
            parameter_norm, update_norm = parameter.norm(), update.norm()
            ratio = trust * parameter_norm / update_norm if parameter_norm > 0 and update_norm > 0 else 1.0
            update = update * ratio
        state.mul_(momentum).add_(update)
        parameter.data.add_(state, alpha=-lr)


def test_lars_equals_mae_lars():
    torch.manual_seed(0)
    config = LinearConfig(optimizer="lars", momentum=0.9, weight_decay=0.0, nesterov=False, batchnorm=True)
    ours = build_head(8, 3, 0.01, batchnorm=True)
    reference = build_head(8, 3, 0.01, batchnorm=True)
    reference.load_state_dict(ours.state_dict())
    optimizer = build_linear_optimizer(ours, config, peak_lr=0.5)
    reference_parameters = list(reference.parameters())
    states = [torch.zeros_like(p) for p in reference_parameters]
    for step in range(5):
        features, labels = torch.randn(32, 8), torch.randint(0, 3, (32,))
        for model in (ours, reference):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
        with torch.no_grad():
            mae_lars_step(reference_parameters, states, lr=0.5)
    # Per step: the loss sums over the batch (32) and the features (8), each trust ratio over a
    # parameter's elements (at most 24); the five steps' roundings add up.
    terms = 5 * (32 + 8 + 24)
    for mine, theirs in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, **reordering_tolerance(theirs, terms))
