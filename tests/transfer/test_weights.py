"""Checkpoint conversion to detectron2 keys (runs without detectron2)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.vit import build_vit
from common.encoder import EncoderSpec
from transfer.weights import PREFIX, backbone_arguments, check_backbone_loaded, to_detectron2


def test_keys_map_one_to_one_without_cls_token_and_final_norm():
    state = build_vit("vit_small", 16, 224).state_dict()
    converted = to_detectron2(state)
    assert set(converted) == {PREFIX + k for k in state} - {PREFIX + "cls_token", PREFIX + "norm.weight",
                                                            PREFIX + "norm.bias"}
    assert converted[PREFIX + "pos_embed"].shape == (1, 197, 384)  # cls slot kept, 14 x 14 grid
    assert torch.equal(converted[PREFIX + "blocks.11.attn.qkv.weight"], state["blocks.11.attn.qkv.weight"])


def test_backbone_arguments_follow_the_checkpoint():
    base = backbone_arguments(EncoderSpec("vit_base", 16, 224), 0)
    assert base["global_blocks"] == [2, 5, 8, 11]
    assert base["window_block_indexes"] == [0, 1, 3, 4, 6, 7, 9, 10]
    assert (base["embed_dim"], base["num_heads"], base["pretrain_img_size"]) == (768, 12, 224)
    small = backbone_arguments(EncoderSpec("vit_small", 16, 224, num_heads=6), 0)
    assert (small["embed_dim"], small["num_heads"]) == (384, 6)
    assert backbone_arguments(EncoderSpec("vit_small", 16, 224), 12)["num_heads"] == 12
    assert backbone_arguments(EncoderSpec("vit_mini", 16, 64), 0)["global_blocks"] == [0, 1, 2, 3]


def test_load_check_names_what_is_missing_or_unexpected():
    weight = torch.ones(2, 3)
    model = {PREFIX + "pos_embed": weight, PREFIX + "blocks.0.attn.rel_pos_h": torch.zeros(3),
             "roi_heads.box_predictor.weight": torch.zeros(4)}
    check_backbone_loaded(model, {PREFIX + "pos_embed": weight.clone()})  # rel_pos and heads are new: fine
    with pytest.raises(ValueError, match="pos_embed: in the detector, not in the checkpoint"):
        check_backbone_loaded(model, {})
    with pytest.raises(ValueError, match="backbone.net.cls_token: not in the detector"):
        check_backbone_loaded(model, {PREFIX + "pos_embed": weight, PREFIX + "cls_token": weight})


def test_load_check_compares_shapes_and_values_of_what_was_loaded():
    """detectron2's checkpointer skips a tensor of another shape and only logs it: the check after
    loading compares the detector's tensors with the checkpoint's."""
    model = {PREFIX + "pos_embed": torch.zeros(1, 17, 8)}
    with pytest.raises(ValueError, match=r"pos_embed: shape \(1, 17, 8\) in the detector, \(1, 65, 8\) in the checkpoint"):
        check_backbone_loaded(model, {PREFIX + "pos_embed": torch.zeros(1, 65, 8)}, compare_values=False)
    with pytest.raises(ValueError, match="pos_embed: not loaded"):
        check_backbone_loaded(model, {PREFIX + "pos_embed": torch.ones(1, 17, 8)})
    check_backbone_loaded(model, {PREFIX + "pos_embed": torch.ones(1, 17, 8)}, compare_values=False)  # before loading


@pytest.mark.parametrize("spec,message", [(EncoderSpec("vit_mini", 8, 64), "patch size 8"),
                                          (EncoderSpec("vit_debug", 16, 64), "2 blocks")])
def test_unsupported_encoders_are_refused_with_the_requirement(spec, message):
    with pytest.raises(ValueError, match=f"(?s)patch size 16.*at least 4 blocks.*{message}.*model.arch=vit_mini"):
        backbone_arguments(spec, 0)


def test_classes_come_from_the_training_json_and_must_match_validation(tmp_path):
    from transfer.shapes import write_dataset
    from transfer.train import dataset_classes

    files = {key: Path(value) for key, value in write_dataset(tmp_path, train=2, val=1).items()}
    assert dataset_classes(files) == ["box", "disc"]
    val = json.loads(files["val_json"].read_text())
    val["categories"].append({"id": 3, "name": "star"})
    files["val_json"].write_text(json.dumps(val))
    with pytest.raises(ValueError, match="validation json's categories differ"):
        dataset_classes(files)


def test_an_ap_without_predictions_is_null_with_its_reason_not_nan():
    from transfer.train import NO_PREDICTIONS, ap_metrics

    metrics, reasons = ap_metrics({"bbox": {"AP": 12.5, "AP50": 30.0}, "segm": {"AP": float("nan")}})
    assert metrics["ap_box"] == 12.5 and metrics["box_AP50"] == 30.0
    assert metrics["ap_mask"] is None and metrics["mask_AP"] is None
    assert reasons == {"ap_mask": NO_PREDICTIONS}
    json.dumps(metrics, allow_nan=False)  # valid JSON


def test_missing_detectron2_says_what_to_install(monkeypatch):
    import sys

    from transfer import require_detectron2

    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    with pytest.raises(SystemExit, match="no-build-isolation 'git\\+https://github.com/facebookresearch/detectron2"):
        require_detectron2()
