"""Mask R-CNN with our ViT through detectron2 (skipped, with the reason, where it is not installed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

detectron2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: COCO transfer)")
pytestmark = [pytest.mark.detectron2, pytest.mark.slow]

from common.vit import build_vit  # noqa: E402
from common.encoder import EncoderSpec, SourceConfig, save_encoder_file  # noqa: E402
from transfer.train import TransferConfig, backbone_prefix, build_lazy_config, main  # noqa: E402
from transfer.weights import check_backbone_loaded, load_encoder, to_detectron2  # noqa: E402


def write_shapes_dataset(root: Path, split: str, count: int, seed: int) -> tuple[Path, Path]:
    """COCO-format images of coloured rectangles and ellipses with polygon masks."""
    rng = np.random.default_rng(seed)
    images_dir = root / split
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image = Image.new("RGB", (160, 128), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            category = int(rng.integers(1, 3))
            x, y = int(rng.integers(0, 110)), int(rng.integers(0, 80))
            w, h = int(rng.integers(24, 50)), int(rng.integers(24, 48))
            colour = (220, 60, 60) if category == 1 else (60, 220, 60)
            if category == 1:
                draw.rectangle([x, y, x + w, y + h], fill=colour)
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            else:
                draw.ellipse([x, y, x + w, y + h], fill=colour)
                angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                polygon = [float(v) for a in angles for v in (x + w / 2 + w / 2 * np.cos(a), y + h / 2 + h / 2 * np.sin(a))]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category,
                                "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0, "segmentation": [polygon]})
        image.save(images_dir / f"{index:04d}.jpg")
        images.append({"id": index + 1, "file_name": f"{index:04d}.jpg", "width": 160, "height": 128})
    path = root / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "disc"}]}))
    return path, images_dir


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoder")
    return save_encoder_file(build_vit("vit_mini", 16, 64).state_dict(), EncoderSpec("vit_mini", 16, 64),
                             folder / "vit_mini16.safetensors")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shapes")
    train_json, train_images = write_shapes_dataset(root, "train", 8, 0)
    val_json, val_images = write_shapes_dataset(root, "val", 4, 1)
    return {"train_json": str(train_json), "train_images": str(train_images), "val_json": str(val_json),
            "val_images": str(val_images)}


@pytest.mark.parametrize("config_name,levels", [("smoke", ["p2", "p3", "p4", "p5", "p6"]),
                                                ("smoke_fpn", ["p2", "p3", "p4", "p5", "p6"])])
def test_backbone_strides_channels_and_complete_loading(encoder_file, tmp_path, config_name, levels):
    from detectron2.config import instantiate

    loaded = load_encoder(encoder_file=str(encoder_file))
    config = TransferConfig(config=config_name, source=SourceConfig(encoder_file=str(encoder_file)))
    cfg = build_lazy_config(config, loaded, tmp_path)
    model = instantiate(cfg.model)
    prefix = backbone_prefix(cfg)
    converted = to_detectron2(loaded.state_dict, prefix)
    check_backbone_loaded(set(model.state_dict()), set(converted), prefix)  # nothing missing
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected
    assert not [k for k in missing if k.startswith(prefix) and "rel_pos" not in k]
    backbone = model.backbone
    features = backbone(torch.randn(1, 3, 256, 256))
    assert list(features) == levels
    for index, level in enumerate(levels):
        assert features[level].shape == (1, 256, 256 // 2 ** (index + 2), 256 // 2 ** (index + 2))
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def test_training_evaluation_and_resume_on_cpu(encoder_file, shapes, tmp_path):
    config = TransferConfig(config="smoke", source=SourceConfig(encoder_file=str(encoder_file)), **shapes)
    config.run.output_root = str(tmp_path / "transfer")
    config.run.progress = False
    result = main(config)
    run_dir = Path(result["run_dir"])
    written = json.loads((run_dir / "result.json").read_text())
    for key in ("ap_box", "ap_mask"):
        assert key in written["metrics"]
    assert written["max_iter"] == 6 and written["resumed_from_iteration"] is None

    # A run killed after its iteration-2 checkpoint: it resumes at iteration 3 and finishes.
    output = run_dir / "detectron2"
    assert (output / "model_0000002.pth").is_file()
    (run_dir / "result.json").unlink()
    (output / "last_checkpoint").write_text("model_0000002.pth")
    resumed = main(config)
    assert resumed["resumed_from_iteration"] == 3
    assert (run_dir / "result.json").is_file()


def test_missing_coco_files_are_named(encoder_file, tmp_path):
    config = TransferConfig(config="smoke", source=SourceConfig(encoder_file=str(encoder_file)),
                            coco_root=str(tmp_path / "coco"))
    config.run.output_root = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"(?s)train_json: .*instances_train2017.json.*val2017"):
        main(config)
