"""SDMP (Ren et al., CVPR 2022, "A Simple Data Mixing Prior for Improving Self-Supervised Learning")
as its authors published it for ViTs (OliverRensu/SDMP, folder moco/: MoCo v3 plus data mixing), as
a pretraining method of the suite.

Each computation is a small function with the meaning of its published counterpart (moco/moco/builder.py):

| here                       | published                                                  |
|----------------------------|------------------------------------------------------------|
| `mixing_box`               | rand_bbox                                                  |
| `mix_batch`                | datamixing                                                 |
| `contrastive_loss`         | MoCo.contrastive_loss (cross-entropy x 2 tau)              |
| `mixture_loss`             | MoCo.contrastive_mix_loss (release 8615686)                |
| `weighted_contrastive_loss`| the lam-weighted pair of contrastive_loss calls (release cd26a51) |
| `mix_to_mix_weights`       | the `common` overlap and its 1/(1+c), c/(1+c) weights      |
| `Sdmp.loss`                | MoCo.forward                                               |

The published release (8615686, the newest) never pastes the partner: its paste condition
`rank * bz <= i < rank * bz` is empty, so its "mixed" views are the views themselves, trained towards
the mixed targets. The `official` presets reproduce that (`sdmp.paste_partner=false`); the `paper`
presets paste as the paper describes and as the first release (cd26a51) did. docs/fidelity.md lists both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import dist
from common.config import ConfigError, added_field
from common.runtime import RunConfig
from pretrain.augment import AugmentConfig
from pretrain.methods.base import LossContext, PretrainingMethod
from pretrain.mixers import numpy_generator
from pretrain.model import ModelConfig, PatchMixModel
from pretrain.recipes import (ARCHES, FASHION_MNIST_SCALES, FLAVOURS, cifar_data, imagenet_data, scaled_to_fashion_mnist,
                              at_tuned_point, with_sections)
from pretrain.shared_config import OptimConfig, PretrainConfig

MIX_LOSSES = ("mixture_likelihood", "weighted_cross_entropy")


@dataclass
class SdmpConfig:
    """SDMP's own fields; used when method=sdmp (the networks are model.*'s MoCo v3 heads)."""
    RANGES: ClassVar[dict[str, str]] = {"temperature": "(0, inf)", "mix_to_source_weight": "[0, inf)",
        "mix_to_mix_weight": "[0, inf)"}

    temperature: float = 0.2  # tau of every InfoNCE term (--moco-t)
    # Paste the resized partner into each image (the paper, release cd26a51); the newest release never does.
    paste_partner: bool = True
    # mixture_likelihood: -log(w_own p_own + w_partner p_partner) (release 8615686); weighted_cross_entropy:
    # w_own CE(own) + w_partner CE(partner) (release cd26a51 and the paper's equation).
    mix_loss: str = "weighted_cross_entropy"
    swap_views: bool = True  # swap the two views of the whole batch with probability 1/2, as published
    mix_to_source_weight: float = 0.5  # weight of the mixed view 2 vs the sources' view-1 keys
    mix_to_mix_weight: float = 0.5  # weight of the mixed view 2 vs the mixed view-1 keys

    def check(self) -> None:
        if self.mix_loss not in MIX_LOSSES:
            raise ConfigError(f"mix_loss must be one of {', '.join(MIX_LOSSES)}, got {self.mix_loss!r}")


@dataclass
class SdmpPretrainConfig(PretrainConfig):
    """An SDMP run: the shared sections and SDMP's own."""

    method: str = "sdmp"
    # Hash-neutral at its default: runs made before SDMP's section existed keep their directories.
    sdmp: SdmpConfig = added_field(default_factory=SdmpConfig)


def mixing_box(height: int, width: int, own_share: float, rng: np.random.Generator) -> tuple[int, int, int, int, int]:
    """(top, bottom, left, right, area) of the partner's box: sides int(size x sqrt(1 - own_share)),
    centre drawn so that the box stays inside the image. As published, the pasted box spans
    2 x (side // 2) pixels while `area` is side_h x side_w (they differ by a row or column for odd sides).
    The side is computed in float32 as published (its own shares are a float32 tensor there): in float64,
    a share within one float32 step of a side boundary gives a box one pixel larger or smaller."""
    ratio = np.sqrt(np.float32(1.0) - np.float32(own_share))
    cut_height, cut_width = int(np.float32(height) * ratio), int(np.float32(width) * ratio)
    centre_y = int(rng.integers(cut_height // 2, height - cut_height // 2))
    centre_x = int(rng.integers(cut_width // 2, width - cut_width // 2))
    return (centre_y - cut_height // 2, centre_y + cut_height // 2, centre_x - cut_width // 2,
            centre_x + cut_width // 2, cut_height * cut_width)


def mix_batch(images: torch.Tensor, lam: torch.Tensor, rng: np.random.Generator, first_row: int,
              every_image: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ResizeMix against the flipped batch of every process (partner of image i: N - 1 - i).

    images: (B, C, H, W), this process's images, rows first_row .. first_row + B - 1 of the whole batch;
    lam: (N,) draws of Beta(1, 1), N = every process's images; every_image: (N, C, H, W) to paste the
    partners from, or None to paste nothing (the newest release). Returns (mixed images (B, C, H, W),
    own shares (N,) = 1 - box area / image area for the box of own share 0.1 + 0.8 lam)."""
    height, width = images.shape[-2:]
    own_shares = (lam * 0.8 + 0.1).tolist()  # one copy to the host, not one per image
    mixed = images.clone()
    new_shares = []
    for index, own_share in enumerate(own_shares):
        top, bottom, left, right, area = mixing_box(height, width, own_share, rng)
        new_shares.append(1.0 - area / float(height * width))
        row = index - first_row
        if every_image is not None and 0 <= row < images.shape[0] and bottom > top and right > left:
            partner = every_image[len(own_shares) - 1 - index: len(own_shares) - index]
            mixed[row, :, top:bottom, left:right] = F.interpolate(
                partner, (bottom - top, right - left), mode="bilinear", align_corners=False)[0].to(mixed.dtype)
    return mixed, torch.tensor(new_shares, dtype=lam.dtype, device=lam.device)


def _logits(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """normalize(q) @ normalize(k).T / tau in at least fp32: (B, N)."""
    dtype = torch.promote_types(queries.dtype, torch.float32)
    return F.normalize(queries.to(dtype), dim=1) @ F.normalize(keys.to(dtype), dim=1).detach().T / temperature


def contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, temperature: float,
                     reduction: str = "mean") -> torch.Tensor:
    """MoCo v3's InfoNCE: cross-entropy of q (B, d) over the gathered keys (N, d) with the positive
    `labels` (B,), times 2 tau."""
    return F.cross_entropy(_logits(queries, keys, temperature), labels, reduction=reduction) * (2 * temperature)


def mixture_loss(queries: torch.Tensor, keys: torch.Tensor, own_labels: torch.Tensor, partner_labels: torch.Tensor,
                 own_weight: torch.Tensor, partner_weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """Release 8615686: -log(w_own p(own key) + w_partner p(partner key)) with p the softmax over the
    gathered keys, averaged over the batch, times 2 tau."""
    probabilities = _logits(queries, keys, temperature).softmax(-1)
    rows = torch.arange(queries.shape[0], device=queries.device)
    mixture = probabilities[rows, own_labels] * own_weight + probabilities[rows, partner_labels] * partner_weight
    return -torch.log(mixture).mean() * (2 * temperature)


def weighted_contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, own_labels: torch.Tensor,
                              partner_labels: torch.Tensor, own_weight: torch.Tensor, partner_weight: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """Release cd26a51 (the paper's equation): mean(w_own CE(own)) + mean(w_partner CE(partner)), each x 2 tau."""
    own = contrastive_loss(queries, keys, own_labels, temperature, "none").mul(own_weight).mean()
    partner = contrastive_loss(queries, keys, partner_labels, temperature, "none").mul(partner_weight).mean()
    return own + partner


def mix_to_mix_weights(own_share: torch.Tensor, partner_share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed image i (own share l_i, partner j = N-1-i) against the mixed keys: the sources it shares
    with mixed key j are c = min(l_i, 1 - l_j) + min(1 - l_i, l_j); weights 1/(1+c) on key i, c/(1+c) on key j."""
    common = torch.minimum(own_share, 1 - partner_share) + torch.minimum(1 - own_share, partner_share)
    return 1 / (1 + common), common / (1 + common)


class Sdmp(PretrainingMethod):
    name = "sdmp"
    config_class = SdmpPretrainConfig
    # Around the cpu scale's lr 3e-3 (the published 1.5e-4 x 20) and the published tau 0.2.
    tuning_space = {"optim.base_lr": (1e-3, 3e-3, 1e-2, 2e-2), "sdmp.temperature": (0.1, 0.2, 0.3)}

    def presets(self) -> dict[str, Callable[[], SdmpPretrainConfig]]:
        return sdmp_presets()

    def build_model(self, config: SdmpPretrainConfig) -> PatchMixModel:
        return PatchMixModel(config.model)

    def distributed(self, model: nn.Module, device: torch.device) -> nn.Module:
        """As PatchMix (both are MoCo v3): head BatchNorms synchronised over the global batch on GPUs,
        as main_moco.py's convert_sync_batchnorm (the ViT itself has no BatchNorm)."""
        if dist.world_size() > 1 and device.type == "cuda":
            model.synchronise_head_batchnorms()
        return super().distributed(model, device)

    def parameter_groups(self, model: nn.Module, config: SdmpPretrainConfig) -> list[dict]:
        """AdamW over every parameter with one weight decay, biases and norms included (MoCo v3's
        main_moco.py passes model.parameters())."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "apply_weight_decay": True}]

    def loss(self, query_model: nn.Module, model: PatchMixModel, views: Sequence[torch.Tensor],
             config: SdmpPretrainConfig, context: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        options, rank, world = config.sdmp, context.rank, context.world_size
        view1, view2 = views[0], views[1]
        batch, device = view1.shape[0], view1.device
        rng = numpy_generator(context.generator)
        lam = _every_process(torch.from_numpy(rng.beta(1.0, 1.0, size=batch).astype(np.float32)), device)
        swap = _every_process(torch.rand(1, generator=context.generator), device)[0]
        if options.swap_views and bool(swap > 0.5):  # one decision for every process (rank 0's draw)
            view1, view2 = view2, view1
        first_row = rank * batch

        def mixed(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            partners = dist.all_gather_no_grad(view) if options.paste_partner else None
            return mix_batch(view, lam, rng, first_row, partners)

        (mixed1, shares), (mixed2, shares) = mixed(view1), mixed(view2)  # the same lam, boxes drawn anew
        query1, query_mixed2 = query_model([view1, mixed2])
        key_inputs = [view1, view2] + ([mixed1] if options.paste_partner else [])
        key1, key2, *key_mixed = (dist.all_gather_no_grad(k) for k in model.keys(key_inputs))
        key_mixed1 = key_mixed[0] if key_mixed else key1  # unpasted: the same images, the same keys

        shares = shares.to(device)  # drawn on the host: one copy to the device, no synchronisation
        own_labels = torch.arange(first_row, first_row + batch, device=device)
        partner_labels = world * batch - 1 - own_labels
        own_share, partner_share = shares[own_labels], shares[partner_labels]
        mix_term = mixture_loss if options.mix_loss == "mixture_likelihood" else weighted_contrastive_loss
        tau = options.temperature
        terms = {
            "source": contrastive_loss(query1, key2, own_labels, tau),
            "mix_to_source": mix_term(query_mixed2, key1, own_labels, partner_labels, own_share, 1 - own_share, tau),
            "mix_to_mix": mix_term(query_mixed2, key_mixed1, own_labels, partner_labels,
                                   *mix_to_mix_weights(own_share, partner_share), tau),
        }
        loss = (terms["source"] + options.mix_to_source_weight * terms["mix_to_source"]
                + options.mix_to_mix_weight * terms["mix_to_mix"])
        metrics = {name: value.detach() for name, value in terms.items()}
        metrics["key_std"] = F.normalize(key1.float(), dim=1).std(dim=0).mean() * math.sqrt(key1.shape[1])
        return loss, metrics


def _every_process(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values` (a host tensor) of every process in rank order, on the host: gathered through the
    device under data parallelism, left on the host (no device round trip) on one process."""
    if not dist.is_distributed():
        return values
    return dist.all_gather_no_grad(values.to(device)).cpu()


# ----------------------------------------------------------------------------------------- presets

def sdmp_imagenet(arch: str, epochs: int, flavour: str) -> SdmpPretrainConfig:
    """SDMP's published ImageNet command (OliverRensu/SDMP README, moco/): MoCo v3's ViT (12 heads,
    fixed sin-cos positions, frozen patch projection: --stop-grad-conv1, no drop path), AdamW lr 1.5e-4
    x batch / 256 with 40 warm-up epochs and a cosine to 0, weight decay 0.1 on every parameter,
    momentum 0.99 -> 1 (--moco-m-cos), tau 0.2, two 224 px views (crop 0.08-1, bilinear), fp16."""
    return SdmpPretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=16, image_size=224, drop_path_rate=0.0,
                          position_embedding="sincos", freeze_patch_embedding=True, compile=True),
        data=imagenet_data(),
        augment=AugmentConfig(crop_scale_min=0.08, crop_interpolation="bilinear", gpu=True, gpu_compile=True),
        sdmp=_sdmp_flavour(flavour),
        optim=OptimConfig(epochs=epochs, warmup_epochs=40, batch_size=1024, base_lr=1.5e-4, min_lr=0.0,
                          weight_decay=0.1, weight_decay_end=0.1, momentum=0.99),
        run=RunConfig(name="sdmp", precision="fp16"),
    )


def sdmp_cifar(dataset: str, arch: str, epochs: int, flavour: str) -> SdmpPretrainConfig:
    """SDMP's recipe at the CIFAR presets' size: 32 px, patch 2, batch 512 and the CIFAR schedule
    (warm-up 100 of 800 epochs); everything else as its ImageNet command."""
    data = cifar_data(dataset)
    return with_sections(sdmp_imagenet(arch, epochs, flavour),
                         model={"patch_size": 2, "image_size": 32},
                         data={"dataset": data.dataset, "root": data.root, "num_workers": data.num_workers},
                         augment={"gpu": False, "gpu_compile": False},
                         optim={"warmup_epochs": 100, "batch_size": 512})


# The points `make tune` chose at a Fashion-MNIST scale (docs/results/fashion-mnist/tuning.md: the best of
# SDMP's `tuning_space` by validation kNN, with the official flavour), set over the scaled recipe for both
# flavours. A scale not listed keeps the scaled recipe.
TUNED_POINTS: dict[str, dict[str, object]] = {"cpu": {"optim.base_lr": 1e-2, "sdmp.temperature": 0.1}}


def sdmp_fashion_mnist(scale: str, flavour: str, tuned: bool = True) -> SdmpPretrainConfig:
    """The CIFAR recipe at a Fashion-MNIST scale (pretrain.recipes.scaled_to_fashion_mnist: lr 1.5e-4
    -> 3e-3 at the cpu scale, EMA momentum 0.99; its crop scale, stem and loss kept), then (`tuned`) at
    the scale's TUNED_POINTS."""
    config = scaled_to_fashion_mnist(sdmp_cifar("cifar10", "vit_s", 800, flavour), scale,
                                     f"fashion_mnist_{scale}_sdmp_{flavour}")
    return at_tuned_point(config, TUNED_POINTS, scale, tuned)


def _sdmp_flavour(flavour: str) -> SdmpConfig:
    """official: the newest release (no pasting, the mixture-likelihood loss); paper: pasting and the
    weighted cross-entropy of the paper and the first release."""
    if flavour == "official":
        return SdmpConfig(paste_partner=False, mix_loss="mixture_likelihood")
    return SdmpConfig(paste_partner=True, mix_loss="weighted_cross_entropy")


def sdmp_presets() -> dict[str, Callable[[], SdmpPretrainConfig]]:
    """Table 2 (ImageNet ViT-S/16, 300 epochs), Table 3 (CIFAR, 800 epochs) and the Fashion-MNIST scales
    in both flavours, named `<dataset>_sdmp_<arch><patch>_<epochs>ep_<flavour>`
    (`fashion_mnist_<scale>_sdmp_<flavour>`)."""
    presets: dict[str, Callable[[], SdmpPretrainConfig]] = {}
    for flavour in FLAVOURS:
        presets[f"imagenet_sdmp_vit_s16_300ep_{flavour}"] = lambda f=flavour: sdmp_imagenet("vit_s", 300, f)
        for dataset in ("cifar10", "cifar100"):
            for arch in ("vit_t", "vit_s", "vit_b"):
                presets[f"{dataset}_sdmp_{arch}2_800ep_{flavour}"] = (
                    lambda d=dataset, a=arch, f=flavour: sdmp_cifar(d, a, 800, f))
        for scale in FASHION_MNIST_SCALES:
            presets[f"fashion_mnist_{scale}_sdmp_{flavour}"] = lambda s=scale, f=flavour: sdmp_fashion_mnist(s, f)
    return presets


METHOD = Sdmp()
