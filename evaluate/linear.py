"""Linear probe: a frozen encoder, a linear classifier on its CLS feature, SGD with cosine lr.

Published recipe (recipes.md): plain Linear head (no BatchNorm), SGD Nesterov momentum 0.9, weight
decay 0, cosine to 0 without warmup; train views RandomResizedCrop + flip; test Resize + CenterCrop.
Reports the last epoch and the best epoch, labelled. Checkpoints every epoch and resumes.
With `linear.augment=false` the head trains on cached centre-crop features (no augmentation): the
same optimiser, a fraction of the cost, for demos and smoke runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from torchvision import transforms

from common import dist
from common.checkpoint import atomic_torch_save, checkpoint_path, load_latest_checkpoint, prune_checkpoints
from common.datasets import build_dataset
from common.health import NonFiniteLossError, StepHealth
from common.rundir import releases_run_locks
from common.runtime import autocast, derive_seed, resolve_precision
from common.sampling import EpochSampler, SeededViews
from common.transforms import NORMALIZE
from evaluate.configs import LinearConfig
from evaluate.features import encode
from evaluate.session import EvalSession, open_session
from pretrain.schedules import learning_rate


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
    bar = tqdm(range(start_epoch, epochs), initial=start_epoch, total=epochs, desc="linear probe",
               unit="epoch", disable=not progress, dynamic_ncols=True)
    health = StepHealth(test_features.device)
    for epoch in bar:
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
        bar.set_postfix(top1=f"{top1:.2f}", loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            on_epoch(history[-1])
    bar.close()
    return history


@releases_run_locks
def main(config) -> dict:
    session = open_session(config)
    if isinstance(session, dict):
        return session
    device, linear, seed = session.device, config.linear, config.run.seed
    encoder = session.encoder.build().to(device).eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    test_features, test_labels = session.features(encoder, "test")
    width = test_features.shape[1]
    world = dist.world_size()
    if linear.batch_size % world:
        raise ValueError(f"linear.batch_size {linear.batch_size} is not divisible by {world} processes")
    batch_per_rank = linear.batch_size // world
    epoch_batches, steps_per_epoch = _feature_batches(session, encoder, batch_per_rank, seed)

    torch.manual_seed(derive_seed(seed, "linear-head"))
    head = build_head(width, session.num_classes, linear.head_init_std, linear.batchnorm).to(device)
    peak_lr = linear.base_lr * linear.batch_size / 256
    optimizer = build_optimizer(head, linear, peak_lr)
    trained_head: nn.Module = head
    if world > 1:
        trained_head = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)

    start_epoch, history = 0, []
    state = load_latest_checkpoint(session.run_dir.checkpoint_dir)
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
    if dist.is_main_process():
        session.run_dir.truncate_metrics("epoch", start_epoch)  # epochs logged after the checkpoint

    def save_epoch(record: dict) -> None:
        if dist.is_main_process():
            session.run_dir.append_metrics(record)
            atomic_torch_save({"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": record["epoch"], "history": history},
                              checkpoint_path(session.run_dir.checkpoint_dir, record["epoch"]))
            prune_checkpoints(session.run_dir.checkpoint_dir, config.run.keep_last_checkpoints)
        dist.barrier()

    fit_head(head, trained_head, optimizer, epoch_batches, steps_per_epoch, test_features.to(device),
             test_labels.to(device), linear.epochs, peak_lr, history, start_epoch, save_epoch,
             progress=config.run.progress and dist.is_main_process(), warmup_epochs=linear.warmup_epochs)
    best = max(history, key=lambda record: record["top1"])
    metrics = {"top1_last": history[-1]["top1"], "top5_last": history[-1]["top5"],
               "top1_best": best["top1"], "top5_best": best["top5"], "best_epoch": best["epoch"]}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"linear probe produced non-finite metrics {metrics}")
    return session.result(metrics, epochs=linear.epochs, augment=linear.augment, peak_lr=peak_lr)
