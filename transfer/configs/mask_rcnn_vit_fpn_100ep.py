"""The ViTDet recipe with the "ViT with FPN" neck of the MAE paper's protocol (Li et al., 2021):
the outputs of blocks 3, 6, 9 and 12 resampled to strides 4, 8, 16 and 32 feed a standard FPN;
window attention inside each stage, global attention at its last block."""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from transfer.backbone import ViTStages

from .mask_rcnn_vitdet_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

vit = model.backbone.net
model.backbone = L(FPN)(
    bottom_up=L(ViTStages)(net=vit, stage_blocks=(2, 5, 8, 11)),
    in_features=["stage2", "stage3", "stage4", "stage5"],
    out_channels=256,
    norm="LN",
    top_block=L(LastLevelMaxPool)(),
    square_pad=1024,
)
