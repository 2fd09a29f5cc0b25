"""The interface every pretraining method implements; the training loop (pretrain/train.py) knows
nothing else of a method.

A method declares its run config (`config_class`: the shared sections of pretrain/shared_config.py
plus its own) and its presets, builds its networks, computes the loss of one per-device batch of
views, sets its per-step schedules, and may act on the gradients and after the optimizer step.
Everything else --
data, views, checkpoints, resume, DDP, the lock, trackers, the encoder record, the evaluations -- is
shared. Its model must expose `base_encoder`, `momentum_encoder` (or None) and
`evaluation_encoder()`: the encoder record names them by those prefixes, so evaluation and transfer
never learn which method trained an encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from common import dist, schedules
from pretrain.shared_config import PretrainConfig, method_sections


@dataclass
class StepSchedule:
    """What the schedules give one step: learning rate, weight decay, EMA momentum (None: the
    method has no EMA network), and method-specific values (e.g. DINO's teacher temperature)."""

    learning_rate: float
    weight_decay: float
    momentum: float | None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class LossContext:
    """Where a loss is computed: the step, its schedule, the mixing generator and the process grid."""

    step: int
    steps_per_epoch: int
    schedule: StepSchedule
    generator: torch.Generator
    rank: int = 0
    world_size: int = 1

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch


def weight_decay_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: weights decayed, biases and 1-D parameters (norms) never; frozen ones left out.
    `apply_weight_decay` tells the training loop which groups follow the weight-decay schedule."""
    decayed, not_decayed = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else not_decayed).append(parameter)
    return [{"params": decayed, "apply_weight_decay": True},
            {"params": not_decayed, "weight_decay": 0.0, "apply_weight_decay": False}]


class PretrainingMethod:
    """Defaults are MoCo v3's (PatchMix's): AdamW groups without decay on 1-D parameters, warmup +
    cosine learning rate, cosine weight decay and momentum per step, EMA before the forward pass."""

    name: str = ""
    # The run config: PretrainConfig itself for a method without options, else a subclass adding the
    # method's own section(s) (a run of another method has none of them: setting one is refused).
    config_class: type[PretrainConfig] = PretrainConfig
    # Multi-crop: whether the method uses augment.num_local_crops.
    uses_local_crops: bool = False
    # Whether every other method's runs hash this method's sections at their defaults (PatchMix's:
    # they were in every run's config before methods owned their sections; no run directory moves).
    sections_in_every_hash: bool = False
    # The few hyperparameters this method is most sensitive to and the values a tuning tries for them
    # (plans/tuning.py, `make tune`): {override key: candidate values}, a grid around the method's preset
    # at the Fashion-MNIST cpu scale, the scale that is tuned. Empty: the method is not tuned.
    tuning_space: dict[str, tuple] = {}

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections only this method reads."""
        return method_sections(self.config_class)

    def presets(self) -> dict[str, Callable[[], PretrainConfig]]:
        """The method's named presets (pretrain/configs.py collects every method's)."""
        return {}

    def result_fields(self, config: PretrainConfig) -> dict[str, Any]:
        """Fields of its own that the method adds to a run's result.json (reports group by them)."""
        return {}

    def summary(self, config: PretrainConfig) -> str:
        """A few characters on the method's own settings for `--list-presets` (e.g. PatchMix's m)."""
        return ""

    def check(self, config: PretrainConfig) -> None:
        """Checks of fields across sections that only this method needs (raise ConfigError)."""

    def build_model(self, config: PretrainConfig) -> nn.Module:
        raise NotImplementedError

    def has_momentum_encoder(self, config: PretrainConfig) -> bool:
        return True

    def parameter_groups(self, model: nn.Module, config: PretrainConfig) -> list[dict]:
        return weight_decay_groups(model)

    def schedule(self, config: PretrainConfig, step: int, steps_per_epoch: int) -> StepSchedule:
        optim = config.optim
        total = optim.epochs * steps_per_epoch
        lr = schedules.learning_rate(step, total, optim.warmup_epochs * steps_per_epoch, optim.peak_lr(),
                                     optim.min_lr)
        wd = schedules.weight_decay(step, total, optim.weight_decay, optim.weight_decay_end)
        momentum_step = step
        if optim.momentum_update == "epoch":  # the published PatchMix code's once-per-epoch update
            momentum_step = (step // steps_per_epoch) * steps_per_epoch
        return StepSchedule(lr, wd, schedules.momentum(momentum_step, total, optim.momentum, optim.momentum_end))

    def before_forward(self, model: nn.Module, schedule: StepSchedule) -> None:
        """MoCo v3 / PatchMix: the EMA update comes before the forward pass."""
        if schedule.momentum is not None:
            model.update_momentum(schedule.momentum)

    def loss(self, query_model: nn.Module, model: nn.Module, views: Sequence[torch.Tensor],
             config: PretrainConfig, context: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, {name: detached scalar}) of one per-device batch; no host synchronisation.
        `query_model` is `model` or its DDP wrapper: call it for every path that needs gradients."""
        raise NotImplementedError

    def before_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                              scaler: torch.amp.GradScaler, config: PretrainConfig, context: LossContext) -> None:
        """After backward, before the step: gradient clipping, freezing (gradients still scaled by `scaler`)."""

    def after_optimizer_step(self, model: nn.Module, schedule: StepSchedule) -> None:
        """After the step (DINO's EMA update comes here)."""

    def distributed(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The gradient path under DDP, or the model itself on one process."""
        if dist.world_size() == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
