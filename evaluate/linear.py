"""Linear probe: a frozen encoder, a linear classifier on its CLS feature, SGD with cosine lr.

Published recipe (recipes.md): plain Linear head (no BatchNorm), SGD Nesterov momentum 0.9, weight
decay 0, cosine to 0 without warmup; train views RandomResizedCrop + flip; test Resize + CenterCrop.
Reports the last epoch and the best epoch, labelled. Checkpoints every epoch and resumes.
With `linear.augment=false` the head trains on cached centre-crop features (no augmentation): the
same optimiser, a fraction of the cost, for demos and smoke runs.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from common import dist
from common.datasets import build_dataset
from common.errors import NonFiniteLossError
from common.health import StepHealth
from common.progress import Progress
from common.encoder import EncoderSpec
from common.runtime import autocast, batch_per_process, derive_seed, resolve_precision
from common.sampling import EpochSampler, SeededViews
from common.transforms import NORMALIZE
from common.schedules import learning_rate, scaled_lr
from evaluate.configs import SMALL_IMAGE_DATASETS, EvalConfig, LinearConfig
from evaluate.features import encode
from evaluate.session import EvalSession, Protocol, protocol_main


def build_head(width: int, num_classes: int, init_std: float, batchnorm: bool = False) -> nn.Module:
    """Linear(width, num_classes), weights N(0, init_std) and zero bias when init_std > 0 (PyTorch's
    default otherwise); with batchnorm, MAE's BatchNorm1d(width, affine=False, eps=1e-6) before it."""
    head = nn.Linear(width, num_classes)
    if init_std:
        nn.init.normal_(head.weight, std=init_std)
        nn.init.zeros_(head.bias)
    if batchnorm:
        return nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), head)
    return head


def build_optimizer(head: nn.Module, config: LinearConfig, peak_lr: float) -> torch.optim.Optimizer:
    """SGD (published, MoCo v3), or LARS as MAE's linear probe: the trust ratio rescales the updates of
    weight matrices only, biases take plain momentum SGD (timm's Lars, one group each)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(head.parameters(), lr=peak_lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    matrices = [p for p in head.parameters() if p.ndim > 1]
    vectors = [p for p in head.parameters() if p.ndim <= 1]
    return Lars([{"params": matrices, "always_adapt": True}, {"params": vectors, "always_adapt": False}],
                lr=peak_lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_transform(image_size: int, scale_min: float) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(scale_min, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        NORMALIZE,
    ])


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent. logits: (N, C), labels: (N,)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = top == labels.unsqueeze(1)
    return 100.0 * correct[:, 0].float().mean().item(), 100.0 * correct.any(1).float().mean().item()


def _feature_batches(session: EvalSession, encoder: nn.Module, batch_per_rank: int, seed: int):
    """(epoch -> iterable of (features, labels)) for the configured training mode, plus steps/epoch."""
    config, device = session.config, session.device
    if not config.linear.augment:
        features, labels = session.features(encoder, "train")
        sampler = EpochSampler(len(features), batch_per_rank, seed, dist.rank(), dist.world_size(),
                               "linear.batch_size")

        def epoch_batches(epoch: int):
            sampler.set_epoch(epoch)
            order = torch.tensor([index for index, _ in sampler]).view(-1, batch_per_rank)
            for batch in order:
                yield features[batch].to(device), labels[batch].to(device)
        return epoch_batches, sampler.batches_per_epoch

    dataset = SeededViews(build_dataset(config.data, "train", None),
                          [train_transform(session.image_size, config.linear.crop_scale_min)], seed)
    sampler = EpochSampler(len(dataset), batch_per_rank, seed, dist.rank(), dist.world_size(), "linear.batch_size")
    precision = resolve_precision(config.run.precision, device)

    def epoch_batches(epoch: int):
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_per_rank, sampler=sampler, drop_last=True,
                            num_workers=config.data.num_workers, pin_memory=device.type == "cuda")
        for (images,), labels in loader:
            with torch.no_grad(), autocast(device, precision):
                feats = encode(encoder, images.to(device, non_blocking=True), config.features.kind,
                               config.features.last_n)
            yield feats.float(), labels.to(device)
    return epoch_batches, sampler.batches_per_epoch


def stop_if_diverged(health: StepHealth, epoch: int, steps_per_epoch: int, what: str) -> None:
    """After an epoch, before its checkpoint: the pretraining health rule (stop at the first
    non-finite loss on every rank, keep the last good checkpoint, exit non-zero)."""
    first = health.agreed_first_bad_step()
    if first >= 0:
        raise NonFiniteLossError(
            f"{what}: non-finite loss at step {first} (epoch {(first - 1) // steps_per_epoch + 1}); stopped "
            f"before saving epoch {epoch + 1}. The checkpoint of epoch {epoch} is the last good one"
            f"{'' if epoch else ' (none: it diverged in the first epoch)'}; lower the learning rate "
            "(base_lr) for a new run, or check the features and labels.")


def fit_head(head: nn.Module, trained_head: nn.Module, optimizer: torch.optim.Optimizer, epoch_batches,
             steps_per_epoch: int, test_features: torch.Tensor, test_labels: torch.Tensor, epochs: int,
             peak_lr: float, history: list[dict], start_epoch: int = 0, on_epoch=None,
             progress: bool = False, warmup_epochs: int = 0) -> list[dict]:
    """Train `head` (through `trained_head`, its DDP wrapper or itself) with a per-step lr: linear
    warmup from 0 over `warmup_epochs`, then cosine from `peak_lr` to 0, evaluating on the test
    features after every epoch.

    epoch_batches(epoch) yields (features (b, D), labels (b,)); test_features: (N, D).
    Appends one record per epoch to `history` and calls on_epoch(record) after it.
    """
    total_steps, warmup_steps = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    bar = Progress(epochs, start_epoch, "linear probe", "epoch", progress, items_per_unit=steps_per_epoch,
                   item_name="steps")
    health = StepHealth(test_features.device)
    for epoch in range(start_epoch, epochs):
        head.train()
        for batch_index, (features, labels) in enumerate(epoch_batches(epoch)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + batch_index, total_steps, warmup_steps,
                                            peak_lr, 0.0)
            loss = F.cross_entropy(trained_head(features), labels)
            health.observe(loss, epoch * steps_per_epoch + batch_index + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        stop_if_diverged(health, epoch, steps_per_epoch, "linear probe")
        head.eval()
        with torch.no_grad():
            top1, top5 = accuracy(head(test_features), test_labels)
        history.append({"epoch": epoch + 1, "top1": top1, "top5": top5, "train_loss": loss.item()})
        bar.update()
        bar.report(top1=f"{top1:.2f}", loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            on_epoch(history[-1])
    bar.close()
    return history


def epoch_summary(history: list[dict]) -> dict:
    """Last and best epoch (by top-1) of a per-epoch history, labelled; refuses non-finite numbers."""
    best = max(history, key=lambda record: record["top1"])
    metrics = {"top1_last": history[-1]["top1"], "top5_last": history[-1]["top5"],
               "top1_best": best["top1"], "top5_best": best["top5"], "best_epoch": best["epoch"]}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"the evaluation produced non-finite metrics {metrics}")
    return metrics


def run(session: EvalSession) -> dict:
    config, device = session.config, session.device
    linear, seed = config.linear, config.run.seed
    encoder = session.encoder.build().to(device).eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    test_features, test_labels = session.features(encoder, "test")
    batch_per_rank = batch_per_process(linear.batch_size, "linear.batch_size")
    epoch_batches, steps_per_epoch = _feature_batches(session, encoder, batch_per_rank, seed)

    torch.manual_seed(derive_seed(seed, "linear-head"))
    head = build_head(test_features.shape[1], session.num_classes, linear.head_init_std, linear.batchnorm).to(device)
    peak_lr = scaled_lr(linear.base_lr, linear.batch_size)
    optimizer = build_optimizer(head, linear, peak_lr)
    trained_head: nn.Module = head
    if dist.world_size() > 1:
        trained_head = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)

    start_epoch, history = 0, []
    state, _ = session.run.resume()
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]

    session.run.total = linear.epochs

    def save_epoch(record: dict) -> None:
        session.run.log(record)
        session.run.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "epoch": record["epoch"],
                          "history": history})

    fit_head(head, trained_head, optimizer, epoch_batches, steps_per_epoch, test_features.to(device),
             test_labels.to(device), linear.epochs, peak_lr, history, start_epoch, save_epoch,
             progress=config.run.progress and dist.is_main_process(), warmup_epochs=linear.warmup_epochs)
    return session.result(epoch_summary(history), epochs=linear.epochs, augment=linear.augment, peak_lr=peak_lr)


# Published base lr per 256 images, by encoder size (recipes.md).
BASE_LR = {"vit_tiny": 0.05, "vit_small": 0.02, "vit_base": 0.01, "vit_debug": 0.05, "vit_mini": 0.05}


def configure(config: EvalConfig, preset: str, spec: EncoderSpec) -> EvalConfig:
    """official: the published probe; mocov3: MoCo v3's; mae: MAE's main_linprobe.py; fast: the
    published optimiser on cached centre-crop features (demos, smoke runs)."""
    small = config.data.dataset in SMALL_IMAGE_DATASETS
    linear = LinearConfig(batch_size=256 if small else 1024, base_lr=BASE_LR[spec.arch])
    if preset == "mocov3":
        linear = dataclasses.replace(linear, epochs=90, base_lr=3.0, nesterov=False, head_init_std=0.01)
    elif preset == "mae":
        linear = dataclasses.replace(linear, epochs=90, warmup_epochs=10, batch_size=16384, base_lr=0.1,
                                     nesterov=False, head_init_std=0.01, batchnorm=True, optimizer="lars")
    elif preset == "fast":
        linear = dataclasses.replace(linear, augment=False)
    return dataclasses.replace(config, linear=linear)


PROTOCOL = Protocol("linear", section="linear", presets=("official", "mocov3", "mae", "fast"), run=run,
                    configure=configure, headline={"linear": ("top1_best", "top-1, best epoch")})
main = protocol_main(PROTOCOL)
