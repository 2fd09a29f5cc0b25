"""The smoke schedule with the ViT-FPN neck."""
from .mask_rcnn_vit_fpn_100ep import model
from .smoke_vitdet import dataloader, image_size, lr_multiplier, optimizer, train  # noqa: F401

model.backbone.bottom_up.net.img_size = image_size
model.backbone.bottom_up.net.window_size = 8
model.backbone.square_pad = image_size
model.roi_heads.box_predictor.test_score_thresh = 0.0  # as in smoke_vitdet
