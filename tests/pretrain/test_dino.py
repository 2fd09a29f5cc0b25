"""DINO as published: its loss, center, schedules, gradient handling and teacher update, each against
the formula written out by hand (facebookresearch/dino main_dino.py and utils.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.config import apply_overrides
from pretrain.configs import preset
from pretrain.methods import method_named
from pretrain.methods.dino import (DinoConfig, DinoHead, clip_gradients, cosine_schedule_value, dino_loss, teacher_monitors,
                                   teacher_temperatures, updated_center)
from pretrain.train import build_training, training_step
from tests.tolerances import reordering_tolerance


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_dino_loss_equals_the_hand_written_cross_entropy():
    """Two global crops and one local crop, 2 images, 3 prototypes: every student crop against every
    teacher global crop except its own view, averaged over the 4 pairs."""
    student = [torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]), torch.tensor([[0.0, 2.0, 0.0], [0.3, -0.3, 0.9]]),
               torch.tensor([[-1.0, 0.5, 0.5], [2.0, 1.0, 0.0]])]
    teacher = [torch.tensor([[0.2, 0.1, 0.0], [1.0, -1.0, 0.0]]), torch.tensor([[0.0, 0.3, 0.6], [0.1, 0.1, 0.4]])]
    center = torch.tensor([[0.1, -0.1, 0.05]])
    student_temp, teacher_temp = 0.1, 0.04
    pairs = []
    for t_index in range(2):
        for s_index in range(3):
            if s_index == t_index:
                continue
            per_image = []
            for image in range(2):
                target = _softmax([(teacher[t_index][image, k].item() - center[0, k].item()) / teacher_temp
                                   for k in range(3)])
                prediction = _softmax([student[s_index][image, k].item() / student_temp for k in range(3)])
                per_image.append(-sum(q * math.log(p) for q, p in zip(target, prediction)))
            pairs.append(sum(per_image) / 2)
    expected = sum(pairs) / len(pairs)
    assert len(pairs) == 4
    assert dino_loss(student, teacher, center, student_temp, teacher_temp).item() == pytest.approx(expected, rel=1e-5)


def test_center_moves_towards_the_mean_teacher_output():
    center = torch.tensor([[1.0, 0.0]])
    teacher = [torch.tensor([[2.0, 4.0], [0.0, 0.0]]), torch.tensor([[4.0, 0.0], [2.0, 4.0]])]
    # mean over the 4 rows = (2, 2); center' = 0.9 * (1, 0) + 0.1 * (2, 2)
    assert torch.allclose(updated_center(center, teacher, 0.9), torch.tensor([[1.1, 0.2]]))


def test_teacher_temperature_warms_up_linearly_then_stays():
    temperatures = teacher_temperatures(0.04, 0.07, 30, 100)
    assert len(temperatures) == 100
    assert temperatures[0] == pytest.approx(0.04) and temperatures[29] == pytest.approx(0.07)  # both ends included
    assert temperatures[15] == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert all(t == pytest.approx(0.07) for t in temperatures[30:])
    assert teacher_temperatures(0.04, 0.07, 0, 5)[0] == pytest.approx(0.07)  # no warm-up: the final value at once


def _published_cosine_scheduler(base, final, epochs, per_epoch, warmup_epochs=0, start_warmup=0.0):
    """utils.cosine_scheduler written out: np.linspace warm-up, then a cosine over the remaining steps."""
    warmup = np.linspace(start_warmup, base, warmup_epochs * per_epoch) if warmup_epochs else np.array([])
    steps = np.arange(epochs * per_epoch - warmup_epochs * per_epoch)
    return np.concatenate((warmup, final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / len(steps)))))


def test_lr_weight_decay_and_momentum_schedules_equal_the_published_arrays_at_every_step():
    config = apply_overrides(preset("debug_cpu"), ["method=dino", "optim.epochs=5", "optim.warmup_epochs=2",
                                                    "optim.min_lr=1e-6", "optim.momentum=0.996"])
    per_epoch = 7
    lr = _published_cosine_scheduler(config.optim.peak_lr(), 1e-6, 5, per_epoch, 2)
    wd = _published_cosine_scheduler(config.optim.weight_decay, config.optim.weight_decay_end, 5, per_epoch)
    momentum = _published_cosine_scheduler(0.996, 1.0, 5, per_epoch)
    method = method_named("dino")
    for step in range(5 * per_epoch):
        schedule = method.schedule(config, step, per_epoch)
        assert schedule.learning_rate == pytest.approx(lr[step], abs=1e-12)
        assert schedule.weight_decay == pytest.approx(wd[step]) and schedule.momentum == pytest.approx(momentum[step])
    assert method.schedule(config, 0, per_epoch).learning_rate == 0.0
    assert method.schedule(config, 2 * per_epoch - 1, per_epoch).learning_rate == pytest.approx(config.optim.peak_lr())
    assert method.schedule(config, 0, per_epoch).momentum == pytest.approx(0.996)
    assert cosine_schedule_value(0.996, 1.0, 10, 10) == pytest.approx(1.0)  # one past the end: the final value


def test_per_parameter_gradient_clipping():
    small, large = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    small.grad, large.grad = torch.tensor([0.3, 0.4]), torch.tensor([30.0, 40.0])  # norms 0.5 and 50
    clip_gradients([small, large], 3.0)
    assert torch.allclose(small.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched
    assert torch.allclose(large.grad, torch.tensor([30.0, 40.0]) * 3.0 / (50 + 1e-6))  # each on its own


def test_head_has_a_fixed_unit_gain_when_norm_last_layer():
    head = DinoHead(8, DinoConfig(out_dim=16, hidden_dim=12, bottleneck_dim=4), norm_last_layer=True)
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.all(gain == 1)
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(16))  # every prototype has unit norm
    output = head(torch.randn(5, 8))
    assert output.shape == (5, 16) and output.abs().max() <= 1.0 + 1e-5  # unit bottleneck . unit prototype
    free = DinoHead(8, DinoConfig(out_dim=16, hidden_dim=12, bottleneck_dim=4), norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def _dino_debug(*overrides: str):
    return apply_overrides(preset("debug_cpu"), ["method=dino", "dino.out_dim=64", "dino.hidden_dim=32",
                                                 "dino.bottleneck_dim=16", "optim.epochs=3", "run.precision=fp32",
                                                 *overrides])


def _one_step(config, step: int, steps_per_epoch: int = 4):
    torch.manual_seed(0)
    training = build_training(config, torch.device("cpu"), torch.float32)
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    before = {name: value.detach().clone() for name, value in training.model.state_dict().items()}
    training_step(training.model, training.model, training.optimizer, training.scaler, views, config, step,
                  steps_per_epoch, torch.float32)
    return before, training.model


def test_last_layer_is_frozen_during_the_first_epoch_only():
    config = _dino_debug("dino.norm_last_layer=false", "optim.warmup_epochs=0")
    last_layer = "head.last_layer.parametrizations.weight.original1"
    before, model = _one_step(config, step=1)  # epoch 0
    assert torch.equal(model.state_dict()[last_layer], before[last_layer])
    assert not torch.equal(model.state_dict()["head.mlp.0.weight"], before["head.mlp.0.weight"])  # the rest learns
    before, model = _one_step(config, step=5)  # epoch 1
    assert not torch.equal(model.state_dict()[last_layer], before[last_layer])


def test_teacher_follows_the_student_after_the_optimizer_step():
    config = _dino_debug("optim.warmup_epochs=0")
    step, per_epoch = 5, 4
    momentum = method_named("dino").schedule(config, step, per_epoch).momentum
    before, model = _one_step(config, step, per_epoch)
    after = model.state_dict()
    for name in ("blocks.0.attn.qkv.weight", "norm.weight"):
        expected = momentum * before[f"momentum_encoder.{name}"] + (1 - momentum) * after[f"base_encoder.{name}"]
        torch.testing.assert_close(after[f"momentum_encoder.{name}"], expected,
                                   **reordering_tolerance(expected, accumulated_terms=3))  # two products, one sum
    assert not torch.equal(after["center"], before["center"])  # the center moved this step


def test_local_crops_pass_the_student_only():
    config = _dino_debug("augment.num_local_crops=2", "augment.local_crop_size=16")
    training = build_training(config, torch.device("cpu"), torch.float32)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    method = method_named("dino")
    from pretrain.methods.base import LossContext

    context = LossContext(0, 4, method.schedule(config, 0, 4), torch.Generator().manual_seed(0))
    calls = []
    teacher = training.model.teacher
    training.model.teacher = lambda crops: calls.append(len(crops)) or teacher(crops)
    loss, metrics = method.loss(training.model, training.model, views, config, context)
    assert calls == [2] and torch.isfinite(loss) and set(metrics) == {
        "dino", "teacher_entropy", "teacher_batch_entropy", "teacher_spread"}


def test_teacher_monitors_tell_the_two_collapses_from_a_healthy_teacher():
    """Uniform collapse: every image's distribution and their mean uniform (log K, log K); one-prototype
    collapse: both 0; healthy: each image one prototype, the batch spread over them (0, log B)."""
    batch, prototypes = 8, 16
    uniform = torch.full((batch, prototypes), 1 / prototypes)
    same = torch.zeros(batch, prototypes)
    same[:, 3] = 1
    spread = torch.eye(prototypes)[:batch]
    for distributions, (entropy, batch_entropy) in ((uniform, (math.log(prototypes),) * 2), (same, (0.0, 0.0)),
                                                    (spread, (0.0, math.log(batch)))):
        monitors = teacher_monitors([distributions, distributions], [distributions, distributions])
        assert monitors["teacher_entropy"].item() == pytest.approx(entropy, abs=1e-5)
        assert monitors["teacher_batch_entropy"].item() == pytest.approx(batch_entropy, abs=1e-5)
    outputs = torch.randn(batch, prototypes)
    assert teacher_monitors([torch.ones(batch, prototypes)] * 2, [uniform] * 2)["teacher_spread"] == 0
    assert teacher_monitors([outputs + 7.0] * 2, [uniform] * 2)["teacher_spread"].item() == pytest.approx(
        outputs.std(dim=0, correction=0).mean().item(), rel=1e-5)  # what every image shares (the centre's part) is no spread
