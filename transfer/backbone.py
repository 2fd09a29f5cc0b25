"""ViT stages for a standard FPN (the "ViT with FPN" neck of the MAE paper's COCO protocol).

The outputs of four blocks of a plain ViT (stride = patch size, 16) are resampled to strides 4, 8,
16 and 32: two 2x transposed convolutions (with LayerNorm and GELU between), one, none, and a 2x2
max-pool. Needs detectron2.
"""
from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import LayerNorm  # channels-first LayerNorm (N, C, H, W)
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.utils import get_abs_pos
from torch import nn


class ViTStages(Backbone):
    """features {"stage2": (B, C, H/4, W/4), ..., "stage5": (B, C, H/32, W/32)} for patch 16."""

    def __init__(self, net: nn.Module, stage_blocks: tuple[int, ...] = (2, 5, 8, 11)):
        super().__init__()
        if len(stage_blocks) != 4:
            raise ValueError(f"need four stage blocks, got {stage_blocks}")
        self.net, self.stage_blocks = net, tuple(stage_blocks)
        width = net._out_feature_channels[net._out_features[0]]
        patch = net._out_feature_strides[net._out_features[0]]
        self.resample = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(width, width, 2, 2), LayerNorm(width), nn.GELU(),
                          nn.ConvTranspose2d(width, width, 2, 2)),
            nn.ConvTranspose2d(width, width, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        strides = (patch // 4, patch // 2, patch, patch * 2)
        self._out_features = [f"stage{i}" for i in range(2, 6)]
        self._out_feature_channels = {name: width for name in self._out_features}
        self._out_feature_strides = dict(zip(self._out_features, strides))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        x = net.patch_embed(images)  # (B, H/p, W/p, C)
        if net.pos_embed is not None:
            x = x + get_abs_pos(net.pos_embed, net.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        outputs = {}
        for index, block in enumerate(net.blocks):
            x = block(x)
            if index in self.stage_blocks:
                stage = self.stage_blocks.index(index)
                outputs[self._out_features[stage]] = self.resample[stage](x.permute(0, 3, 1, 2))
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}
