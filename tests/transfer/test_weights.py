"""Checkpoint conversion to detectron2 keys (runs without detectron2)."""
from __future__ import annotations

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
    model_keys = {PREFIX + "pos_embed", PREFIX + "blocks.0.attn.rel_pos_h", "roi_heads.box_predictor.weight"}
    check_backbone_loaded(model_keys, {PREFIX + "pos_embed"})  # rel_pos and heads are new: fine
    with pytest.raises(ValueError, match="missing.*pos_embed"):
        check_backbone_loaded(model_keys, set())
    with pytest.raises(ValueError, match=r"unexpected \['backbone.net.cls_token'\]"):
        check_backbone_loaded(model_keys, {PREFIX + "pos_embed", PREFIX + "cls_token"})


def test_missing_detectron2_says_what_to_install(monkeypatch):
    import sys

    from transfer import require_detectron2

    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    with pytest.raises(SystemExit, match="no-build-isolation 'git\\+https://github.com/facebookresearch/detectron2"):
        require_detectron2()
