"""A few iterations at 256 px, batch 2, no AMP: checks the whole path on a CPU in minutes. Every
detection is scored (no score threshold): after a few iterations few boxes pass the recipe's 0.05,
and COCOEvaluator computes no AP without predictions."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .mask_rcnn_vitdet_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

image_size = 256
model.backbone.net.img_size = image_size
model.backbone.square_pad = image_size
model.backbone.net.window_size = 8
model.roi_heads.box_predictor.test_score_thresh = 0.0
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
train.amp.enabled = False
train.ddp.fp16_compression = False
train.max_iter = 6
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 3
train.log_period = 1
lr_multiplier.scheduler.milestones = [4, 5]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 1 / train.max_iter
