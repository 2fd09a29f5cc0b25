"""Import published checkpoints as encoder files, and export ours (timm-loadable safetensors).

Formats (all ViTs use timm's key names inside):
- `patchmix`: the published PatchMix checkpoint: `state_dict` with `base_encoder.*`,
  `momentum_encoder.*` (each with its projector under `head.*`) and `predictor.*`, maybe behind a
  DDP `module.` prefix. Default encoder: momentum (base for the published ViT-T, which has none).
- `mocov3`: MoCo v3's `state_dict` with `module.base_encoder.*` / `module.momentum_encoder.*`
  (projector under `head.*`). Default encoder: base, as MoCo v3's own evaluation does.
- `dino`: a full DINO checkpoint (`teacher` / `student`, backbone under `backbone.*`, maybe
  `module.`), or DINO's released backbone-only weights. Default encoder: teacher.
- `timm`: a plain timm ViT state dict; a classifier `head.*` is dropped. Also our own exports: an
  encoder file, or a folder timm loads (its `model.safetensors`, or the folder itself).
The head count, which the weights cannot tell (ViT-S reads as 6 or 12 heads), is the one the input
states (an encoder file's metadata, an exported folder's config.json); a different --num-heads is refused.
Loading is strict: any missing or unexpected backbone key fails with the keys named.
Checkpoints are read with torch's safe `weights_only` unpickler (DINO's stored argparse
Namespace is the only extra type allowed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from timm.models import save_for_hf

from common.encoder import EncoderSpec, encoder_state_from_run, infer_spec, save_encoder_file
from common.vit import VIT_SIZES

FORMATS = ("patchmix", "mocov3", "dino", "timm")
DEFAULT_ENCODER = {"patchmix": "momentum", "mocov3": "base", "dino": "teacher", "timm": "model"}
ENCODER_CHOICES = {"patchmix": ("momentum", "base"), "mocov3": ("base", "momentum"),
                   "dino": ("teacher", "student"), "timm": ("model",)}
DROPPED_PREFIXES = ("head.", "fc_norm.")  # projector / classifier heads; never part of the backbone
# What timm's save_for_hf writes into an exported folder (export_for_timm).
FOLDER_WEIGHTS, FOLDER_CONFIG = "model.safetensors", "config.json"


class ConversionError(ValueError):
    pass


def weights_file(path: Path) -> Path:
    """The checkpoint file of an input: the file itself, or the weights of an exported folder."""
    path = Path(path)
    return path / FOLDER_WEIGHTS if path.is_dir() else path


def load_checkpoint_file(path: Path) -> dict:
    path = weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _strip_module(state: dict) -> dict:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _take_prefix(state: dict, prefix: str, what: str) -> dict:
    taken = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not taken:
        found = sorted({k.split(".")[0] + "." for k in state})
        raise ConversionError(f"no '{prefix}*' keys for the {what}; the checkpoint's top-level prefixes "
                              f"are {found[:10]}")
    return taken


def extract_backbone(checkpoint: dict, source_format: str, encoder: str = "") -> dict[str, torch.Tensor]:
    """timm-named backbone weights (heads dropped) from a loaded checkpoint of `source_format`."""
    if source_format not in FORMATS:
        raise ConversionError(f"unknown format {source_format!r}; choose one of {', '.join(FORMATS)}")
    encoder = encoder or DEFAULT_ENCODER[source_format]
    if encoder not in ENCODER_CHOICES[source_format]:
        raise ConversionError(f"--encoder for {source_format} is one of {ENCODER_CHOICES[source_format]}, "
                              f"got {encoder!r}")
    if source_format in ("patchmix", "mocov3"):
        state = _strip_module(checkpoint.get("state_dict", checkpoint))
        state = _take_prefix(state, f"{encoder}_encoder.", f"{encoder} encoder")
    elif source_format == "dino":
        if encoder in checkpoint:
            state = _take_prefix(_strip_module(checkpoint[encoder]), "backbone.", f"DINO {encoder} backbone")
        elif "cls_token" in checkpoint or "module.cls_token" in checkpoint:
            state = _strip_module(checkpoint)  # released backbone-only weights
        else:
            raise ConversionError(f"DINO checkpoint has neither '{encoder}' nor backbone keys; found "
                                  f"{sorted(checkpoint)[:10]}")
    else:
        state = _strip_module(checkpoint.get("state_dict", checkpoint.get("model", checkpoint)))
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def check_backbone_keys(state: dict[str, torch.Tensor], spec: EncoderSpec) -> None:
    """Raise ConversionError naming every missing and unexpected key (and shape mismatches)."""
    reference = spec.build().state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    mismatched = sorted(k for k in set(state) & set(reference) if state[k].shape != reference[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if mismatched:
        problems.append("shape mismatches: " + ", ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(reference[k].shape)}" for k in mismatched))
    if problems:
        raise ConversionError(f"checkpoint does not match a {spec.arch}/{spec.patch_size} ViT: " + "; ".join(problems))


def stated_heads(path: Path) -> tuple[int, str] | None:
    """(head count, where it is stated) when the input states one: an encoder file's metadata, or the
    config.json beside the model.safetensors of an exported folder; None for published checkpoints."""
    weights = weights_file(path)
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            heads = int((handle.metadata() or {}).get("num_heads") or 0)
        if heads:
            return heads, f"the metadata of {weights}"
    config = weights.parent / FOLDER_CONFIG
    if weights.name == FOLDER_WEIGHTS and config.is_file():
        heads = int(json.loads(config.read_text()).get("model_args", {}).get("num_heads") or 0)
        if heads:
            return heads, str(config)
    return None


def head_count(path: Path, num_heads: int) -> int:
    """The head count to convert with: the one the input states, else `num_heads` (0 = the arch's
    default). A `num_heads` that contradicts the input's would compute other features from the same
    weights, so it is refused."""
    stated = stated_heads(path)
    if stated is None:
        return num_heads
    heads, where = stated
    if num_heads and num_heads != heads:
        raise ConversionError(f"--num-heads {num_heads} contradicts the {heads} heads stated in {where}; "
                              "leave --num-heads out to use them")
    return heads


def convert(path: Path, source_format: str, output: Path, encoder: str = "", num_heads: int = 0) -> Path:
    """Convert a published checkpoint (or one of our exports) into an encoder file (safetensors +
    architecture metadata)."""
    state = extract_backbone(load_checkpoint_file(path), source_format, encoder)
    spec = infer_spec(state, head_count(path, num_heads))
    check_backbone_keys(state, spec)
    description = f"{source_format}:{encoder or DEFAULT_ENCODER[source_format]}:{Path(path).name}"
    return save_encoder_file(state, spec, output, description)


# timm's registered ViTs of our widths; the debug sizes reuse ViT-T's name with their own arguments.
TIMM_ARCHITECTURES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
                      "vit_base": "vit_base_patch16_224"}


def timm_model_args(spec: EncoderSpec) -> dict:
    """Everything timm.create_model needs to rebuild the encoder: sizes, patch, input size and the
    head count (which the weights do not fix: ViT-S reads as 6 or 12 heads)."""
    size = VIT_SIZES[spec.arch]
    return {"img_size": spec.image_size, "patch_size": spec.patch_size, "embed_dim": size.embed_dim,
            "depth": size.depth, "num_heads": spec.heads, "num_classes": 0, "global_pool": "token",
            "dynamic_img_size": True}


def export_for_timm(state_dict: dict[str, torch.Tensor], spec: EncoderSpec, folder: Path) -> Path:
    """A folder that `timm.create_model("local-dir:FOLDER", pretrained=True)` (or the HF hub, once
    pushed) rebuilds with no extra argument: timm's own save helper writes model.safetensors and a
    config.json holding the architecture and every model argument."""
    model_args = timm_model_args(spec)
    model = timm.create_model(TIMM_ARCHITECTURES.get(spec.arch, TIMM_ARCHITECTURES["vit_tiny"]), pretrained=False,
                              **model_args)
    model.load_state_dict(state_dict)  # strict: every tensor in place
    save_for_hf(model, str(folder), model_args=model_args, safe_serialization=True)
    return Path(folder)


def export_run(run_dir: Path, output: Path, encoder: str = "auto") -> Path:
    """Our pretraining run's evaluation encoder: a safetensors encoder file (OUT.safetensors, with the
    architecture in its metadata) or a timm / HF-hub folder (any other OUT)."""
    loaded = encoder_state_from_run(run_dir, encoder, allow_incomplete=True)
    if Path(output).suffix == ".safetensors":
        return save_encoder_file(loaded.state_dict, loaded.spec, output, loaded.description)
    return export_for_timm(loaded.state_dict, loaded.spec, Path(output))


def cli(command: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m evaluate {command}")
    if command == "convert":
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--encoder", default="", help="which encoder of the checkpoint (default per format)")
        parser.add_argument("--num-heads", type=int, default=0,
                            help="attention heads (default: the count the input states, in an encoder file's "
                                 "metadata or an exported folder's config.json; else the arch's, ViT-S 12 as in "
                                 "published checkpoints); a count the input contradicts is refused")
        parser.add_argument("input", help="a checkpoint file, or a folder written by `python -m evaluate export`")
    else:
        parser.add_argument("--from", dest="run_dir", required=True)
        parser.add_argument("--encoder", default="auto", choices=("auto", "momentum", "base"))
    parser.add_argument("output", help="output: a .safetensors encoder file, or (export) a folder for "
                                       "timm.create_model('local-dir:FOLDER')")
    arguments = parser.parse_args(argv)
    try:
        if command == "convert":
            path = convert(Path(arguments.input), arguments.format, Path(arguments.output), arguments.encoder,
                           arguments.num_heads)
        else:
            path = export_run(Path(arguments.run_dir), Path(arguments.output), arguments.encoder)
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {path}")
