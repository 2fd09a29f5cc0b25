"""detectron2 LazyConfig files of the transfer stage. Variants are small diffs of a base."""
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
CONFIGS = {
    "vitdet_100ep": FOLDER / "mask_rcnn_vitdet_100ep.py",  # the ViTDet recipe (default)
    "vit_fpn_100ep": FOLDER / "mask_rcnn_vit_fpn_100ep.py",  # ViT + FPN of the MAE protocol
    "smoke": FOLDER / "smoke_vitdet.py",  # minutes on a CPU: a few iterations at 256 px
    "smoke_fpn": FOLDER / "smoke_vit_fpn.py",
}
