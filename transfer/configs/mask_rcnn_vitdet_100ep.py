"""Mask R-CNN, ViTDet recipe (detectron2 projects/ViTDet, mask_rcnn_vitdet_b_100ep): plain ViT with
window attention (global in blocks 2, 5, 8, 11), relative positions, simple feature pyramid
(scales 4, 2, 1, 0.5) + max-pool level, LN in the heads; LSJ 1024 (scale 0.1-2.0), batch 64,
184,375 iterations (100 epochs), steps at 163,889 and 177,546, 250 warmup iterations, AdamW lr 1e-4
wd 0.1, layer decay 0.7, drop path 0.1, AMP. The backbone's width, depth, heads and patch size are
set from the evaluated checkpoint by `python -m transfer` (ViT-B/16 here by default).
"""
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.max_iter = 184375
train.eval_period = 18438  # ten evaluations over the schedule
train.checkpointer.period = 2000
train.checkpointer.max_to_keep = 3

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[163889, 177546],
                                         num_updates=train.max_iter),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
