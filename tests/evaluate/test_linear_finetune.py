"""Linear probe optimisation and finetune's layer-wise lr decay."""
from __future__ import annotations

import math

import pytest
import torch

from evaluate.configs import FinetuneConfig
from evaluate.finetune import build_optimizer
from evaluate.linear import build_head, fit_head
from common.vit import build_vit


def test_linear_probe_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(5, 32, generator=generator)
    labels = torch.randint(0, 5, (600,), generator=generator)
    features = directions[labels] * 3 + 0.5 * torch.randn(600, 32, generator=generator)
    train, test = slice(0, 500), slice(500, 600)
    head = build_head(32, 5, init_std=0.01)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def epoch_batches(epoch):
        order = torch.randperm(500, generator=torch.Generator().manual_seed(epoch))
        for batch in order.view(-1, 50):
            yield features[train][batch], labels[train][batch]

    history = fit_head(head, head, optimizer, epoch_batches, 10, features[test], labels[test], epochs=10,
                       peak_lr=0.1, history=[])
    assert len(history) == 10 and history[-1]["top1"] >= 99.0
    best = max(history, key=lambda r: r["top1"])
    assert best["top1"] >= history[-1]["top1"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))  # last step


def test_finetune_layer_decay_on_parameter_groups():
    model = build_vit("vit_debug", 4, 32)  # depth 2: layer ids 0 (embeddings), 1, 2 (blocks), 3 (head)
    model.reset_classifier(10)
    config = FinetuneConfig(layer_decay=0.75, weight_decay=0.05)
    optimizer = build_optimizer(model, config, peak_lr=1e-3)
    depth = len(model.blocks)
    scale_of = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            scale_of[id(parameter)] = (group["lr_scale"], group["weight_decay"])
    expected_layers = {"cls_token": 0, "pos_embed": 0, "patch_embed.proj.weight": 0,
                       "blocks.0.attn.qkv.weight": 1, "blocks.1.mlp.fc2.weight": 2,
                       "norm.weight": depth + 1, "head.weight": depth + 1}
    parameters = dict(model.named_parameters())
    for name, layer in expected_layers.items():
        lr_scale, _ = scale_of[id(parameters[name])]
        assert lr_scale == pytest.approx(0.75 ** (depth + 1 - layer)), name
    assert scale_of[id(parameters["blocks.0.attn.qkv.weight"])][1] == 0.05
    assert scale_of[id(parameters["blocks.0.attn.qkv.bias"])][1] == 0.0  # no decay on biases
    assert scale_of[id(parameters["cls_token"])][1] == 0.0
