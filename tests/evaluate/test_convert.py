"""Round trips of synthetic state dicts in each published format; strict key checking."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch

from common.vit import build_vit
from evaluate.convert import ConversionError, convert
from common.encoder import EncoderSpec, load_encoder_file, save_encoder_file


def _vit(seed: int) -> dict:
    torch.manual_seed(seed)
    return build_vit("vit_debug", 4, 32).state_dict()


def _projector(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"head.0.weight": torch.randn(16, 48), "head.1.weight": torch.randn(16), "head.3.weight": torch.randn(8, 16)}


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


BASE, MOMENTUM = _vit(1), _vit(2)


def published_patchmix() -> dict:
    state = {**_prefixed("base_encoder.", {**BASE, **_projector(3)}),
             **_prefixed("momentum_encoder.", {**MOMENTUM, **_projector(4)}),
             "predictor.0.weight": torch.randn(16, 8)}
    return {"state_dict": _prefixed("module.", state), "epoch": 800}


def mocov3() -> dict:
    return {"state_dict": published_patchmix()["state_dict"], "arch": "vit_small"}


def dino_full() -> dict:
    return {"teacher": _prefixed("backbone.", {**MOMENTUM, **_prefixed("head.", {"mlp.0.weight": torch.randn(4, 4)})}),
            "student": _prefixed("module.backbone.", BASE), "args": argparse.Namespace(arch="vit_small")}


@pytest.mark.parametrize("fmt,checkpoint,encoder,expected", [
    ("patchmix", published_patchmix, "", MOMENTUM),
    ("patchmix", published_patchmix, "base", BASE),
    ("mocov3", mocov3, "", BASE),
    ("dino", dino_full, "", MOMENTUM),
    ("dino", dino_full, "student", BASE),
    ("dino", lambda: dict(BASE), "", BASE),
    ("timm", lambda: {**BASE, "head.weight": torch.randn(10, 48), "head.bias": torch.zeros(10)}, "", BASE),
])
def test_round_trip(tmp_path, fmt, checkpoint, encoder, expected):
    source = tmp_path / "published.pth"
    torch.save(checkpoint(), source)
    output = convert(source, fmt, tmp_path / "encoder.safetensors", encoder)
    loaded = load_encoder_file(output)
    assert loaded.spec == EncoderSpec("vit_debug", 4, 32, 0)
    assert loaded.state_dict.keys() == expected.keys()
    assert all(torch.equal(loaded.state_dict[k], expected[k]) for k in expected)
    loaded.build()  # strict load into a fresh ViT


def test_missing_key_is_named(tmp_path):
    checkpoint = published_patchmix()
    del checkpoint["state_dict"]["module.momentum_encoder.blocks.1.attn.qkv.weight"]
    torch.save(checkpoint, tmp_path / "c.pth")
    with pytest.raises(ConversionError, match=r"missing keys: \['blocks.1.attn.qkv.weight'\]"):
        convert(tmp_path / "c.pth", "patchmix", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_unexpected_key_is_named(tmp_path):
    checkpoint = {**BASE, "blocks.0.attn.rel_pos": torch.zeros(3)}
    torch.save(checkpoint, tmp_path / "c.pth")
    with pytest.raises(ConversionError, match=r"unexpected keys: \['blocks.0.attn.rel_pos'\]"):
        convert(tmp_path / "c.pth", "timm", tmp_path / "o.safetensors")


def test_wrong_format_names_prefixes(tmp_path):
    torch.save({"state_dict": _prefixed("encoder_q.", BASE)}, tmp_path / "c.pth")
    with pytest.raises(ConversionError, match=r"no 'momentum_encoder\.\*' keys.*encoder_q\."):
        convert(tmp_path / "c.pth", "patchmix", tmp_path / "o.safetensors")


class Payload:
    """An arbitrary class: the safe unpickler must refuse to construct it."""


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"state_dict": BASE, "evil": Payload()}, tmp_path / "c.pth")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        convert(tmp_path / "c.pth", "timm", tmp_path / "o.safetensors")


def test_exported_file_loads_in_timm(tmp_path):
    torch.manual_seed(0)
    state = build_vit("vit_small", 16, 224).state_dict()
    path = save_encoder_file(state, EncoderSpec("vit_small", 16, 224), tmp_path / "vit_s16.safetensors")
    model = timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay={"file": str(path)})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
