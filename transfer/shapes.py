"""A generated two-class COCO-format detection set (boxes and discs), for smoke runs and tests.

`python -m transfer.shapes OUT [--train 16 --val 8]` writes OUT/{train,val}/*.jpg and
OUT/{train,val}.json, then prints the `train_json= train_images= val_json= val_images=` overrides
that point `python -m transfer` at it. Needs only numpy and Pillow.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ({"id": 1, "name": "box"}, {"id": 2, "name": "disc"})
WIDTH, HEIGHT = 160, 128


def write_split(root: Path, split: str, count: int, seed: int) -> tuple[Path, Path]:
    """`count` images of 1-3 coloured rectangles (category 1) and ellipses (category 2) on a dark
    background, with boxes and polygon masks; returns (json path, image folder)."""
    rng = np.random.default_rng(seed)
    images_dir = Path(root) / split
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            category = int(rng.integers(1, 3))
            x, y = int(rng.integers(0, WIDTH - 50)), int(rng.integers(0, HEIGHT - 48))
            w, h = int(rng.integers(24, 50)), int(rng.integers(24, 48))
            if category == 1:
                draw.rectangle([x, y, x + w, y + h], fill=(220, 60, 60))
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            else:
                draw.ellipse([x, y, x + w, y + h], fill=(60, 220, 60))
                angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                polygon = [float(v) for a in angles
                           for v in (x + w / 2 + w / 2 * np.cos(a), y + h / 2 + h / 2 * np.sin(a))]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category,
                                "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                                "segmentation": [polygon]})
        image.save(images_dir / f"{index:04d}.jpg")
        images.append({"id": index + 1, "file_name": f"{index:04d}.jpg", "width": WIDTH, "height": HEIGHT})
    path = Path(root) / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(CATEGORIES)}))
    return path, images_dir


def write_dataset(root: Path, train: int = 16, val: int = 8) -> dict[str, str]:
    """Both splits; returns the TransferConfig fields that select them."""
    train_json, train_images = write_split(root, "train", train, seed=0)
    val_json, val_images = write_split(root, "val", val, seed=1)
    return {"train_json": str(train_json), "train_images": str(train_images),
            "val_json": str(val_json), "val_images": str(val_images)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transfer.shapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--train", type=int, default=16, help="training images")
    parser.add_argument("--val", type=int, default=8, help="validation images")
    arguments = parser.parse_args(argv)
    fields = write_dataset(arguments.output, arguments.train, arguments.val)
    print(" ".join(f"{key}={value}" for key, value in fields.items()))


if __name__ == "__main__":
    main()
