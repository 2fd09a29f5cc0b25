"""DINO (Caron et al., ICCV 2021) as its authors published it (facebookresearch/dino, main_dino.py,
vision_transformer.py and utils.py), as a pretraining method of the suite.

Each computation is a small function with the meaning of its published counterpart, so that the two
can be compared one to one on the same inputs:

| here                          | published                                    |
|-------------------------------|----------------------------------------------|
| `DinoHead`                    | vision_transformer.DINOHead                  |
| `DinoModel.forward` / `teacher` | utils.MultiCropWrapper on student / teacher |
| `dino_loss` (= `cross_entropy_over_pairs` of `teacher_distributions`) | DINOLoss.forward (before its center update) |
| `updated_center`              | DINOLoss.update_center                       |
| `teacher_temperatures`        | DINOLoss.teacher_temp_schedule               |
| `cosine_schedule_value`       | utils.cosine_scheduler (one entry)           |
| `clip_gradients`              | utils.clip_gradients                         |
| `cancel_gradients_last_layer` | utils.cancel_gradients_last_layer            |
| `DinoModel.update_teacher`    | the EMA loop at the end of train_one_epoch   |

Student and teacher ViTs are `base_encoder` and `momentum_encoder` (the names the encoder record
uses); evaluations read the teacher, as DINO's do.
"""
from __future__ import annotations

import copy
import os
import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from common import dist
from common.config import ConfigError, added_field
from common.runtime import RunConfig
from pretrain.augment import AugmentConfig
from pretrain.methods.base import LossContext, PretrainingMethod, StepSchedule
from pretrain.model import ModelConfig, build_encoder, compile_encoders, encode_views
from pretrain.recipes import (ARCHES, FASHION_MNIST_SCALES, at_tuned_point, cifar_data, imagenet_data,
                              scaled_to_fashion_mnist)
from pretrain.shared_config import OptimConfig, PretrainConfig


@dataclass
class DinoConfig:
    """DINO's own fields (main_dino.py's arguments of the same names); used when method=dino."""
    RANGES: ClassVar[dict[str, str]] = {"out_dim": "[1, inf)", "hidden_dim": "[1, inf)",
        "bottleneck_dim": "[1, inf)", "num_layers": "[1, inf)", "student_temp": "(0, inf)",
        "teacher_temp": "(0, inf)", "warmup_teacher_temp": "(0, inf)",
        "warmup_teacher_temp_epochs": "[0, inf)", "center_momentum": "[0, 1)", "clip_grad": "[0, inf)",
        "freeze_last_layer": "[0, inf)"}

    out_dim: int = 65536  # prototypes: width of the weight-normalised last layer
    hidden_dim: int = 2048  # head MLP width (3 layers, GELU)
    bottleneck_dim: int = 256  # head output before l2 normalisation and the last layer
    num_layers: int = 3  # head MLP layers
    use_bn_in_head: bool = False  # BatchNorm in the head MLP (published default: off)
    norm_last_layer: bool = True  # the last layer's weight-norm gain fixed at 1 (README: off for ViT-S)
    student_temp: float = 0.1  # student softmax temperature
    teacher_temp: float = 0.04  # teacher temperature after its warm-up
    warmup_teacher_temp: float = 0.04  # teacher temperature at epoch 0
    warmup_teacher_temp_epochs: int = 0  # linear teacher-temperature warm-up, in epochs
    center_momentum: float = 0.9  # EMA of the teacher-output center
    clip_grad: float = 3.0  # per-parameter gradient-norm clipping (0 = off)
    freeze_last_layer: int = 1  # epochs during which the last layer gets no update


@dataclass
class DinoPretrainConfig(PretrainConfig):
    """A DINO run: the shared sections and DINO's own."""

    method: str = "dino"
    # Hash-neutral at its default: runs made before DINO's section existed keep their directories.
    dino: DinoConfig = added_field(default_factory=DinoConfig)


class DinoHead(nn.Module):
    """x: (B, in_dim) -> (B, out_dim): MLP (GELU; truncated-normal init), l2-normalised bottleneck,
    then a weight-normalised linear layer without bias whose gain is fixed at 1 if `norm_last_layer`."""

    def __init__(self, in_dim: int, config: DinoConfig, norm_last_layer: bool):
        super().__init__()
        if config.num_layers == 1:
            self.mlp = nn.Linear(in_dim, config.bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            widths = [in_dim] + [config.hidden_dim] * (config.num_layers - 1)
            for width_in, width_out in zip(widths[:-1], widths[1:]):
                layers.append(nn.Linear(width_in, width_out))
                if config.use_bn_in_head:
                    layers.append(nn.BatchNorm1d(width_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(config.hidden_dim, config.bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(config.bottleneck_dim, config.out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        if norm_last_layer:
            gain.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class DinoModel(nn.Module):
    """Student (base_encoder + head) and EMA teacher (momentum_encoder + momentum_head), with the
    center of the teacher outputs as a buffer (so checkpoints carry it)."""

    def __init__(self, config: DinoPretrainConfig):
        super().__init__()
        self.config = config.model
        self.base_encoder = build_encoder(config.model, config.model.drop_path_rate)
        self.head = DinoHead(self.base_encoder.embed_dim, config.dino, config.dino.norm_last_layer)
        # The teacher starts as a copy of the student (its head built with the default norm_last_layer,
        # then overwritten with the student's state, as published) and never gets gradients.
        self.momentum_encoder = build_encoder(config.model, 0.0)
        self.momentum_encoder.load_state_dict(self.base_encoder.state_dict())
        self.momentum_head = copy.deepcopy(self.head)
        for parameter in self.teacher_parameters():
            parameter.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, config.dino.out_dim))
        if config.model.compile:
            compile_encoders((self.base_encoder, self.momentum_encoder), config.model.compile_mode)

    def student_parameters(self) -> list[nn.Parameter]:
        return [*self.base_encoder.parameters(), *self.head.parameters()]

    def teacher_parameters(self) -> list[nn.Parameter]:
        return [*self.momentum_encoder.parameters(), *self.momentum_head.parameters()]

    def forward(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Student outputs of every crop, each (B, out_dim): the backbone on each resolution, the
        head once on all of them (MultiCropWrapper)."""
        features = encode_views(self.base_encoder, views, self.config.batch_views)
        return list(self.head(torch.cat(features)).split([f.shape[0] for f in features]))

    @torch.no_grad()
    def teacher(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher outputs of the global crops, each (B, out_dim)."""
        features = encode_views(self.momentum_encoder, views, self.config.batch_views)
        return list(self.momentum_head(torch.cat(features)).split([f.shape[0] for f in features]))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, every parameter (one foreach call)."""
        torch._foreach_lerp_(self.teacher_parameters(), [p.detach() for p in self.student_parameters()],
                             1.0 - momentum)

    def evaluation_encoder(self) -> nn.Module:
        return self.momentum_encoder


def teacher_temperatures(warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int,
                         epochs: int) -> np.ndarray:
    """Teacher temperature of each epoch: linear from warmup to final over `warmup_epochs` (both ends
    included, as np.linspace), then constant."""
    return np.concatenate((np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
                           np.ones(max(epochs - warmup_epochs, 0)) * teacher_temp))


def cosine_schedule_value(base_value: float, final_value: float, total_steps: int, step: int,
                          warmup_steps: int = 0, start_warmup_value: float = 0.0) -> float:
    """Entry `step` of DINO's cosine_scheduler: linear warm-up from `start_warmup_value` to `base_value`
    over `warmup_steps` entries (both ends included), then a cosine from base to final over the rest."""
    if step < warmup_steps:
        if warmup_steps == 1:
            return float(start_warmup_value)
        return float(start_warmup_value + (base_value - start_warmup_value) * step / (warmup_steps - 1))
    remaining = total_steps - warmup_steps
    return float(final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * (step - warmup_steps) / remaining)))


def teacher_distributions(teacher_outputs: Sequence[torch.Tensor], center: torch.Tensor,
                          teacher_temp: float) -> list[torch.Tensor]:
    """The centred, sharpened teacher distribution of each global crop: softmax((t - center) / temp),
    each (B, K), in at least fp32 (the published softmax runs in fp32 under autocast), no gradient."""
    dtype = torch.promote_types(teacher_outputs[0].dtype, torch.float32)
    return [F.softmax((t.to(dtype) - center) / teacher_temp, dim=-1).detach() for t in teacher_outputs]


def cross_entropy_over_pairs(student_outputs: Sequence[torch.Tensor], teacher_probabilities: Sequence[torch.Tensor],
                             student_temp: float) -> torch.Tensor:
    """Cross-entropy of the student distribution of every crop against each teacher distribution of
    another view, averaged over the pairs (the loop of DINOLoss.forward)."""
    dtype = torch.promote_types(student_outputs[0].dtype, torch.float32)
    student_log_probabilities = [F.log_softmax(s.to(dtype) / student_temp, dim=-1) for s in student_outputs]
    total, terms = 0.0, 0
    for teacher_index, target in enumerate(teacher_probabilities):
        for student_index, log_probability in enumerate(student_log_probabilities):
            if student_index == teacher_index:  # never the same view
                continue
            total = total + torch.sum(-target * log_probability, dim=-1).mean()
            terms += 1
    return total / terms


def dino_loss(student_outputs: Sequence[torch.Tensor], teacher_outputs: Sequence[torch.Tensor],
              center: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINOLoss.forward before its center update: student_outputs n crops of (B, K), teacher_outputs
    the 2 global crops of (B, K), center (1, K)."""
    return cross_entropy_over_pairs(student_outputs, teacher_distributions(teacher_outputs, center, teacher_temp),
                                    student_temp)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_outputs: Sequence[torch.Tensor], momentum: float) -> torch.Tensor:
    """center * m + mean of the teacher outputs over every process's global crops * (1 - m)."""
    outputs = torch.cat(list(teacher_outputs)).to(center.dtype)
    batch_center = torch.sum(outputs, dim=0, keepdim=True)
    if dist.is_distributed():
        torch.distributed.all_reduce(batch_center)
    batch_center = batch_center / (len(outputs) * dist.world_size())
    return center * momentum + batch_center * (1 - momentum)


@torch.no_grad()
def clip_gradients(parameters: Sequence[nn.Parameter], clip: float) -> list[torch.Tensor]:
    """Each parameter's gradient scaled to norm <= clip on its own (not a global norm); returns the norms.
    The coefficient is applied on the device without a host synchronisation."""
    norms = []
    for parameter in parameters:
        if parameter.grad is None:
            continue
        norm = parameter.grad.norm(2)
        norms.append(norm)
        coefficient = clip / (norm + 1e-6)
        parameter.grad.mul_(torch.clamp(coefficient, max=1.0))
    return norms


def cancel_gradients_last_layer(epoch: int, head: nn.Module, freeze_last_layer: int) -> None:
    """During the first `freeze_last_layer` epochs the last layer gets no gradient (hence no update)."""
    if epoch >= freeze_last_layer:
        return
    for parameter in head.last_layer.parameters():
        parameter.grad = None


def head_output_bytes(config: DinoPretrainConfig, batch_per_process: int) -> int:
    """Bytes of the fp32 (batch x out_dim) tensors of one step, the activations that grow with out_dim:
    per crop the student output, its log-softmax and their gradients, per global crop the teacher's
    output and probabilities."""
    crops = 2 + config.augment.num_local_crops
    return (4 * crops + 2 * 2) * batch_per_process * config.dino.out_dim * 4


def device_memory_bytes(device: str) -> int | None:
    """Memory of the device a run on `device` would use, when it can be known from here: the first
    GPU's where one is visible, the host's for CPU runs; None on a machine without the run's GPU (a
    login node planning cluster jobs)."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available() and "SLURM_JOB_ID" in os.environ):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


class Dino(PretrainingMethod):
    name = "dino"
    config_class = DinoPretrainConfig
    uses_local_crops = True
    # At the cpu scale's values (lr 1e-2, teacher 0.07, 4,096 prototypes, EMA 0.99) DINO learns least:
    # lower learning rates, the published ViT-B teacher temperature 0.04, fewer prototypes for a 2-block
    # ViT, and the published slower EMA.
    tuning_space = {"optim.base_lr": (1e-3, 3e-3, 1e-2), "dino.teacher_temp": (0.04, 0.07),
                    "dino.out_dim": (256, 1024, 4096), "optim.momentum": (0.99, 0.996)}

    def presets(self) -> dict[str, Callable[[], DinoPretrainConfig]]:
        return dino_presets()

    def check(self, config: DinoPretrainConfig) -> None:
        if config.dino.warmup_teacher_temp_epochs > config.optim.epochs:
            raise ConfigError(f"dino.warmup_teacher_temp_epochs {config.dino.warmup_teacher_temp_epochs} exceeds "
                              f"optim.epochs {config.optim.epochs}")
        available = device_memory_bytes(config.run.device)
        batch = config.optim.batch_size // max(1, int(os.environ.get("WORLD_SIZE", "1")))
        needed = head_output_bytes(config, batch)
        if available is not None and needed > available:
            raise ConfigError(
                f"dino.out_dim {config.dino.out_dim} needs about {needed / 2**30:.0f} GiB of head outputs for a batch "
                f"of {batch} x {2 + config.augment.num_local_crops} crops per process, more than the "
                f"{available / 2**30:.0f} GiB of this device: lower dino.out_dim or optim.batch_size, or use more devices")

    def build_model(self, config: DinoPretrainConfig) -> DinoModel:
        return DinoModel(config)

    def schedule(self, config: DinoPretrainConfig, step: int, steps_per_epoch: int) -> StepSchedule:
        optim, total = config.optim, config.optim.epochs * steps_per_epoch
        lr = cosine_schedule_value(optim.peak_lr(), optim.min_lr, total, step, optim.warmup_epochs * steps_per_epoch)
        wd = cosine_schedule_value(optim.weight_decay, optim.weight_decay_end, total, step)
        momentum = cosine_schedule_value(optim.momentum, optim.momentum_end, total, step)
        temperatures = teacher_temperatures(config.dino.warmup_teacher_temp, config.dino.teacher_temp,
                                            config.dino.warmup_teacher_temp_epochs, optim.epochs)
        return StepSchedule(lr, wd, momentum, {"teacher_temp": float(temperatures[step // steps_per_epoch])})

    def before_forward(self, model: nn.Module, schedule: StepSchedule) -> None:
        """DINO updates its teacher after the optimizer step, not before the forward pass."""

    def loss(self, query_model: nn.Module, model: DinoModel, views: Sequence[torch.Tensor],
             config: DinoPretrainConfig, context: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher_outputs = model.teacher(views[:2])  # only the 2 global crops pass through the teacher
        student_outputs = query_model(list(views))
        targets = teacher_distributions(teacher_outputs, model.center, context.schedule.extra["teacher_temp"])
        loss = cross_entropy_over_pairs(student_outputs, targets, config.dino.student_temp)  # = dino_loss
        metrics = {"dino": loss.detach(), **teacher_monitors(teacher_outputs, targets)}
        model.center.copy_(updated_center(model.center, teacher_outputs, config.dino.center_momentum))
        return loss, metrics

    def before_optimizer_step(self, model: DinoModel, optimizer: torch.optim.Optimizer,
                              scaler: torch.amp.GradScaler, config: DinoPretrainConfig, context: LossContext) -> None:
        if config.dino.clip_grad:
            if scaler.is_enabled():
                scaler.unscale_(optimizer)  # clip the true gradients, as published
            clip_gradients(model.student_parameters(), config.dino.clip_grad)
        cancel_gradients_last_layer(context.epoch, model.head, config.dino.freeze_last_layer)

    def after_optimizer_step(self, model: DinoModel, schedule: StepSchedule) -> None:
        model.update_teacher(schedule.momentum)


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum(dim=-1)


@torch.no_grad()
def teacher_monitors(teacher_outputs: Sequence[torch.Tensor],
                     distributions: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What tells DINO's two collapses apart (DINO paper, section 5.3), from the teacher's head outputs
    (each crop (B, K)) and its centred, sharpened distributions (each (B, K)):

    - teacher_entropy: mean entropy of the images' distributions: log K when each is uniform, 0 when
      each is one prototype;
    - teacher_batch_entropy: entropy of their mean: 0 when every image picks the same prototype, log K
      when the batch spreads over all (a healthy teacher: low teacher_entropy, high batch entropy);
    - teacher_spread: how much the head's outputs differ between images, mean over prototypes of the
      standard deviation over the batch (before centring and temperature): the centre removes the part
      all images share, so a spread far below the teacher temperature leaves each image's
      distribution close to uniform whatever the centre."""
    probabilities = torch.cat(list(distributions))
    outputs = torch.cat(list(teacher_outputs)).float()
    return {"teacher_entropy": _entropy(probabilities).mean(),
            "teacher_batch_entropy": _entropy(probabilities.mean(dim=0)),
            "teacher_spread": outputs.std(dim=0, correction=0).mean()}


# ----------------------------------------------------------------------------------------- presets

def dino_imagenet(arch: str, epochs: int) -> DinoPretrainConfig:
    """DINO's published ImageNet recipes (facebookresearch/dino README): ViT-S/16 as its "full command"
    (teacher temperature 0.04 -> 0.07 over 30 epochs, norm_last_layer off), ViT-B/16 as its ViT-B command
    (main_dino.py's defaults); 16 GPUs x 64 = batch 1024, 2 x 224 px + 8 x 96 px crops, fp16. Its ViT-S
    has 6 heads. The device augmentation path of the PatchMix ImageNet presets (same transforms)."""
    small = arch == "vit_s"
    return DinoPretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=16, image_size=224, num_heads=6 if small else 0,
                          initialisation="dino", pos_embed_interpolation="dino", compile=True),
        data=imagenet_data(),
        augment=AugmentConfig(crop_scale_min=0.4, num_local_crops=8, local_crop_scale_min=0.05,
                              local_crop_scale_max=0.4, gpu=True, gpu_decode=True, gpu_compile=True),
        dino=DinoConfig(norm_last_layer=not small, teacher_temp=0.07 if small else 0.04,
                        warmup_teacher_temp_epochs=30 if small else 0),
        optim=OptimConfig(epochs=epochs, warmup_epochs=10, batch_size=1024, base_lr=5e-4),
        run=RunConfig(name="dino", precision="fp16"),
    )


def dino_cifar(dataset: str, arch: str, epochs: int) -> DinoPretrainConfig:
    """DINO's recipe at the CIFAR presets' size: 32 px, patch 2, batch 512 and the CIFAR schedule
    (warm-up 100 of 800 epochs) of the PatchMix rows; two 32 px global crops and no local crops (the
    paper's Table 3 "2x32"), at main_dino.py's recommended scale 0.14-1 without multi-crop; the
    ViT-S/16 README recipe's head and teacher settings (docs/fidelity.md)."""
    return DinoPretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=2, image_size=32, num_heads=6 if arch == "vit_s" else 0,
                          initialisation="dino", pos_embed_interpolation="dino", compile=True),
        data=cifar_data(dataset),
        augment=AugmentConfig(crop_scale_min=0.14),
        dino=DinoConfig(norm_last_layer=False, teacher_temp=0.07, warmup_teacher_temp_epochs=30),
        optim=OptimConfig(epochs=epochs, warmup_epochs=100, batch_size=512, base_lr=5e-4),
        run=RunConfig(name="dino", precision="fp16"),
    )


# The points `make tune` chose at a Fashion-MNIST scale (docs/results/fashion-mnist/tuning.md: the best of
# DINO's `tuning_space` by validation kNN), set over the scaled recipe. A scale not listed keeps the scaled recipe.
TUNED_POINTS: dict[str, dict[str, object]] = {
    "cpu": {"optim.base_lr": 3e-3, "dino.teacher_temp": 0.04, "dino.out_dim": 1024, "optim.momentum": 0.99}}


def dino_fashion_mnist(scale: str, tuned: bool = True) -> DinoPretrainConfig:
    """The CIFAR recipe at a Fashion-MNIST scale (pretrain.recipes.scaled_to_fashion_mnist: the data,
    model, epochs, batch and precision every method gets there; lr 5e-4 -> 1e-2 at the cpu scale, EMA
    momentum 0.99), with the head narrowed like the PatchMix heads (hidden and bottleneck to the
    projector's width and output, 4,096 prototypes) and the teacher-temperature warm-up scaled with the
    epochs (30 of 800); then (`tuned`) at the scale's TUNED_POINTS."""
    config = scaled_to_fashion_mnist(dino_cifar("cifar10", "vit_s", 800), scale, f"fashion_mnist_{scale}_dino_official")
    config = dataclasses.replace(config, dino=dataclasses.replace(
        config.dino, hidden_dim=config.model.projector_hidden_dim, bottleneck_dim=config.model.output_dim,
        out_dim=4096, warmup_teacher_temp_epochs=round(config.optim.epochs * 30 / 800)))
    return at_tuned_point(config, TUNED_POINTS, scale, tuned)


def dino_presets() -> dict[str, Callable[[], DinoPretrainConfig]]:
    """Table 2 (ImageNet, 300 epochs), Table 3 (CIFAR, 800 epochs) and the Fashion-MNIST scales, named
    `<dataset>_dino_<arch><patch>_<epochs>ep_official` (`fashion_mnist_<scale>_dino_official`): DINO's
    recipe is its published one (the paper trains no DINO), so it has one flavour."""
    presets: dict[str, Callable[[], DinoPretrainConfig]] = {}
    for arch in ("vit_s", "vit_b"):
        presets[f"imagenet_dino_{arch}16_300ep_official"] = lambda a=arch: dino_imagenet(a, 300)
    for dataset in ("cifar10", "cifar100"):
        for arch in ("vit_t", "vit_s", "vit_b"):
            presets[f"{dataset}_dino_{arch}2_800ep_official"] = lambda d=dataset, a=arch: dino_cifar(d, a, 800)
    for scale in FASHION_MNIST_SCALES:
        presets[f"fashion_mnist_{scale}_dino_official"] = lambda s=scale: dino_fashion_mnist(s)
    return presets


METHOD = Dino()
