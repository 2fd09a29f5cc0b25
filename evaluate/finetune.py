"""Full finetuning with the published recipe, built from timm's public pieces.

timm provides the layer-wise lr decay parameter groups (`create_optimizer_v2(layer_decay=...)`),
the warmup + cosine schedule, RandAugment, random erasing, Mixup/CutMix with label smoothing, and
the model EMA. CIFAR-size inputs use RandomCrop(size, padding 4) instead of RandomResizedCrop.
Reports last and best epoch (and the EMA model's, when enabled); checkpoints every epoch and resumes.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from common import dist
from common.datasets import build_dataset
from common.health import StepHealth
from common.progress import Progress
from common.encoder import EncoderSpec
from common.runtime import autocast, batch_per_process, derive_seed, resolve_precision
from common.sampling import EpochSampler, SeededViews
from common.transforms import NORMALIZE, eval_transform
from common.schedules import scaled_lr
from evaluate.configs import SMALL_IMAGE_DATASETS, EvalConfig, FinetuneConfig
from evaluate.linear import accuracy, epoch_summary, stop_if_diverged
from evaluate.session import EvalSession, Protocol, protocol_main


def posterize_to_zero_bits(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, with 0 bits meaning what it meant in the Pillow the recipe ran on: every bit
    cleared (a black image). timm's PosterizeIncreasing asks for 0 bits at magnitude 10, which
    rand-m9-mstd0.5 reaches (clipped) for ~0.1 % of images; Pillow >= 12 refuses 0 bits."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_posterize(image, bits_to_keep, **kwargs)


def with_valid_posterize(transform):
    """The transform with every RandAugment posterize op using `posterize_to_zero_bits` (in place)."""
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = posterize_to_zero_bits
    return transform


def finetune_transform(config: FinetuneConfig, image_size: int):
    """Training transform: timm's RandAugment pipeline, or the CIFAR variant with RandomCrop."""
    if not config.small_image_crop:
        return with_valid_posterize(create_transform(
            image_size, is_training=True, auto_augment=config.auto_augment, interpolation="bicubic",
            re_prob=config.random_erasing, re_mode="pixel", re_count=1))
    # Bicubic like the published code (timm's RandAugment otherwise picks bilinear or bicubic per op).
    augment_params = {"translate_const": int(image_size * 0.45), "img_mean": (124, 116, 104),
                      "interpolation": Image.BICUBIC}
    return with_valid_posterize(transforms.Compose([
        transforms.RandomCrop(image_size, padding=4),
        transforms.RandomHorizontalFlip(),
        rand_augment_transform(config.auto_augment, augment_params),
        transforms.ToTensor(),
        NORMALIZE,
        RandomErasing(config.random_erasing, mode="pixel", device="cpu"),
    ]))


def evaluation_transform(config: FinetuneConfig, image_size: int):
    """Resize + centre crop, or (published CIFAR finetune) the raw image, normalised."""
    if config.test_transform == "raw":
        return transforms.Compose([transforms.ToTensor(), NORMALIZE])
    return eval_transform(image_size)


def build_classifier(session, config: FinetuneConfig) -> nn.Module:
    """The pretrained encoder with drop path and a fresh classification head.

    global_pool=avg is MAE's: the mean of the patch tokens before the final norm, which is dropped,
    then a fresh LayerNorm (fc_norm). head_init_std > 0: truncated normal head weights, zero bias (MAE).
    """
    model = session.encoder.build(drop_path_rate=config.drop_path_rate)
    model.reset_classifier(session.num_classes, global_pool=config.global_pool)
    if config.global_pool == "avg":
        model.norm = nn.Identity()
        model.fc_norm = nn.LayerNorm(model.embed_dim, eps=1e-6)
    if config.head_init_std:
        nn.init.trunc_normal_(model.head.weight, std=config.head_init_std)
        nn.init.zeros_(model.head.bias)
    return model


def layer_id(name: str, num_blocks: int, final_norm_with_last_block: bool = False) -> int:
    """Embeddings 0, block i -> i + 1, the head (and MAE's fc_norm) -> num_blocks + 1 (lr scale 1). The
    final norm: num_blocks + 1 by the MAE/BEiT rule, num_blocks (the last block's) in the published timm."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if final_norm_with_last_block and name.startswith("norm."):
        return num_blocks
    return num_blocks + 1


def build_optimizer(model: nn.Module, config: FinetuneConfig, peak_lr: float) -> torch.optim.Optimizer:
    """AdamW with layer-wise lr decay: a parameter of layer l gets lr_scale = decay^(L + 1 - l)
    (timm's schedulers multiply each group's lr by its `lr_scale`). No weight decay on biases,
    norms, the cls token and the position embedding."""
    num_blocks = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer = layer_id(name, num_blocks, config.final_norm_with_last_block)
        decayed = parameter.ndim > 1 and name not in ("cls_token", "pos_embed")
        group = groups.setdefault((layer, decayed), {
            "params": [], "lr_scale": config.layer_decay ** (num_blocks + 1 - layer),
            "weight_decay": config.weight_decay if decayed else 0.0})
        group["params"].append(parameter)
    return torch.optim.AdamW(list(groups.values()), lr=peak_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step warmup from warmup_lr, then cosine to min_lr: over the whole run with the warmup laid
    on top (timm's default, the published finetune), or starting at the peak after the warmup (MAE)."""
    total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
    return CosineLRScheduler(optimizer, t_initial=total - warmup if config.lr_cosine_after_warmup else total,
                             lr_min=config.min_lr, warmup_t=warmup, warmup_lr_init=config.warmup_lr,
                             warmup_prefix=config.lr_cosine_after_warmup, t_in_epochs=False)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, device: torch.device, precision) -> tuple[float, float]:
    """Top-1/top-5 (percent) over this rank's shard, combined over ranks by sample counts."""
    model.eval()
    correct1 = correct5 = count = torch.zeros((), device=device)
    for images, labels in loader:
        with autocast(device, precision):
            logits = model(images.to(device, non_blocking=True)).float()
        labels = labels.to(device)
        top1, top5 = accuracy(logits, labels)
        correct1 = correct1 + top1 * len(labels)
        correct5 = correct5 + top5 * len(labels)
        count = count + len(labels)
    totals = dist.all_reduce_mean(torch.stack([correct1, correct5, count])) * dist.world_size()
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def run(session: EvalSession) -> dict:
    config, device = session.config, session.device
    finetune, seed = config.finetune, config.run.seed
    precision = resolve_precision(config.run.precision, device)
    world = dist.world_size()
    batch_per_rank = batch_per_process(finetune.batch_size, "finetune.batch_size", multiple=2)  # Mixup pairs

    torch.manual_seed(derive_seed(seed, "finetune-head"))
    model = build_classifier(session, finetune).to(device)
    peak_lr = scaled_lr(finetune.base_lr, finetune.batch_size)
    optimizer = build_optimizer(model, finetune, peak_lr)
    ema = ModelEmaV3(model, decay=finetune.model_ema_decay) if finetune.model_ema else None

    train_set = SeededViews(build_dataset(config.data, "train", None),
                            [finetune_transform(finetune, session.image_size)], seed)
    sampler = EpochSampler(len(train_set), batch_per_rank, seed, dist.rank(), world, "finetune.batch_size")
    steps_per_epoch = sampler.batches_per_epoch
    scheduler = build_scheduler(optimizer, finetune, steps_per_epoch)
    mixup = Mixup(mixup_alpha=finetune.mixup, cutmix_alpha=finetune.cutmix,
                  label_smoothing=finetune.label_smoothing, num_classes=session.num_classes)
    criterion = SoftTargetCrossEntropy()
    test_set = build_dataset(config.data, "test", evaluation_transform(finetune, session.image_size))
    shard = -(-len(test_set) // world)
    test_loader = DataLoader(Subset(test_set, range(dist.rank() * shard, min((dist.rank() + 1) * shard, len(test_set)))),
                             batch_size=batch_per_rank, num_workers=config.data.num_workers)

    start_epoch, history = 0, []
    state, _ = session.run.resume()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, history = state["epoch"], state["history"]
    trained: nn.Module = model
    health = StepHealth(device)
    session.run.total = finetune.epochs
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    epochs = Progress(finetune.epochs, start_epoch, "finetune", "epoch", config.run.progress and dist.is_main_process(),
                      items_per_unit=steps_per_epoch * finetune.batch_size)
    for epoch in range(start_epoch, finetune.epochs):
        model.train()
        sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=batch_per_rank, sampler=sampler, drop_last=True,
                            num_workers=config.data.num_workers, pin_memory=device.type == "cuda")
        for batch_index, ((images,), labels) in enumerate(loader):
            step = epoch * steps_per_epoch + batch_index
            scheduler.step_update(step)
            np.random.seed(derive_seed(seed, "mixup", step, dist.rank()) % 2**32)  # Mixup draws from numpy
            torch.manual_seed(derive_seed(seed, "finetune-step", step, dist.rank()))  # drop path
            images, targets = mixup(images.to(device, non_blocking=True), labels.to(device))
            with autocast(device, precision):
                loss = criterion(trained(images).float(), targets)
            health.observe(loss, step + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model, step=step)
        stop_if_diverged(health, epoch, steps_per_epoch, "finetune")
        top1, top5 = evaluate_model(model, test_loader, device, precision)
        record = {"epoch": epoch + 1, "top1": top1, "top5": top5, "train_loss": loss.item()}
        if ema is not None:
            record["ema_top1"], record["ema_top5"] = evaluate_model(ema.module, test_loader, device, precision)
        history.append(record)
        epochs.update()
        epochs.report(top1=f"{top1:.2f}", loss=f"{loss.item():.3f}")
        session.run.log(record)
        session.run.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "ema": ema.state_dict() if ema is not None else {}, "epoch": epoch + 1, "history": history})
    epochs.close()

    metrics = epoch_summary(history)
    if ema is not None:
        metrics["ema_top1_last"] = history[-1]["ema_top1"]
        metrics["ema_top1_best"] = max(r["ema_top1"] for r in history)
    return session.result(metrics, epochs=finetune.epochs, peak_lr=peak_lr, layer_decay=finetune.layer_decay)


# Published base lr per 256 images, by encoder size (recipes.md).
BASE_LR = {"vit_tiny": 1e-3, "vit_small": 5e-4, "vit_base": 5e-4, "vit_debug": 1e-3, "vit_mini": 1e-3}


def configure(config: EvalConfig, preset: str, spec: EncoderSpec) -> EvalConfig:
    """official: the published finetune (CIFAR-size data tested on the raw image, the final norm in
    the last block's lr group); mae_vit_b: MAE's main_finetune.py for ViT-B."""
    small = config.data.dataset in SMALL_IMAGE_DATASETS
    finetune = FinetuneConfig(base_lr=BASE_LR[spec.arch], small_image_crop=small, batch_size=256 if small else 1024,
                              final_norm_with_last_block=True, test_transform="raw" if small else "resize_crop")
    if preset == "mae_vit_b":
        finetune = dataclasses.replace(finetune, layer_decay=0.65, warmup_epochs=5, global_pool="avg",
                                       warmup_lr=0.0, min_lr=1e-6, lr_cosine_after_warmup=True,
                                       head_init_std=2e-5, final_norm_with_last_block=False,
                                       test_transform="resize_crop")
    return dataclasses.replace(config, finetune=finetune)


PROTOCOL = Protocol("finetune", section="finetune", presets=("official", "mae_vit_b"), run=run, configure=configure,
                    uses_features=False, headline={"finetune": ("top1_best", "top-1, best epoch")})
main = protocol_main(PROTOCOL)
