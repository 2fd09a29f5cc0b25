"""Our encoders as detectron2 ViT backbone weights (no detectron2 needed to convert).

timm and detectron2's ViT share block key names (blocks.i.norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2) and the patch projection. The conversion takes the evaluation encoder (momentum
encoder by default, base encoder for runs without one), drops the cls token and the final norm
(the backbone uses neither; the projector is not part of an encoder file), keeps the position
embedding with its cls slot (detectron2's `pretrain_use_cls_token`) at the pretraining grid --
detectron2 resamples it bicubically to the detection input (64 x 64 tokens at 1024 px) -- and
prefixes every key with `backbone.net.`. Relative-position tables of window attention are new
parameters, initialised to zero by detectron2.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.encoder import EncoderSpec, LoadedEncoder, SourceConfig, load_source
from common.vit import VIT_SIZES

PREFIX = "backbone.net."  # ViTDet's simple feature pyramid; the ViT-FPN neck nests it: backbone.bottom_up.net.
FPN_PREFIX = "backbone.bottom_up.net."
DROPPED = ("cls_token", "norm.weight", "norm.bias")


def to_detectron2(state_dict: dict[str, torch.Tensor], prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """timm ViT keys -> detectron2 `backbone.net.*` keys (cls token and final norm dropped)."""
    if "pos_embed" not in state_dict or "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not a ViT encoder state dict (pos_embed / patch_embed.proj.weight missing)")
    return {prefix + key: value for key, value in state_dict.items() if key not in DROPPED}


def backbone_arguments(spec: EncoderSpec, num_heads: int) -> dict:
    """detectron2 ViT(...) arguments that make its shapes match the checkpoint. A head count that
    contradicts the encoder's is refused: the weights would load and compute other features."""
    if num_heads and spec.num_heads and num_heads != spec.heads:
        raise ValueError(f"num_heads={num_heads} contradicts the encoder's {spec.heads} heads ({spec.arch}); "
                         "leave num_heads=0 to take the encoder's")
    size = VIT_SIZES[spec.arch]
    depth = size.depth
    if spec.patch_size != 16 or depth < 4:
        raise ValueError(
            f"the transfer backbones need a ViT with patch size 16 (the feature pyramid's strides 4 to 64 "
            f"are built from stride 16) and at least 4 blocks (four stages); this encoder is {spec.arch} "
            f"with patch size {spec.patch_size} and {depth} blocks. For a smoke run, pretrain a small one: "
            "python -m pretrain --preset debug_cpu model.arch=vit_mini model.patch_size=16 model.image_size=64 "
            "data.synthetic_image_size=64")
    # ViTDet: global attention closes each quarter of the blocks (2, 5, 8, 11 of 12), windows elsewhere;
    # the ViT-FPN neck reads its four stages at the same blocks.
    global_blocks = sorted({depth * (quarter + 1) // 4 - 1 for quarter in range(4)})
    return {"embed_dim": size.embed_dim, "depth": depth, "num_heads": num_heads or spec.heads,
            "patch_size": spec.patch_size, "pretrain_img_size": spec.image_size,
            "window_block_indexes": [i for i in range(depth) if i not in global_blocks],
            "global_blocks": global_blocks}


def load_encoder(run_dir: str = "", encoder_file: str = "", encoder: str = "auto") -> LoadedEncoder:
    return load_source(SourceConfig(run_dir=run_dir, encoder_file=encoder_file, encoder=encoder))


def write_detectron2_checkpoint(loaded: LoadedEncoder, path: Path, prefix: str = PREFIX) -> Path:
    """A checkpoint detectron2's DetectionCheckpointer loads as is ({"model": state, ...})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": to_detectron2(loaded.state_dict, prefix), "source": loaded.description,
                "source_digest": loaded.digest, "matching_heuristics": False}, path)
    return path


def check_backbone_loaded(model_state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                          prefix: str = PREFIX, compare_values: bool = True) -> None:
    """Every converted weight must be in the detector with its shape (and, after loading, its
    values), and every backbone weight of the detector must come from the checkpoint, except the
    new relative-position tables. detectron2's checkpointer only logs the tensors it skips."""
    problems = [f"{key}: not in the detector" for key in sorted(set(expected) - set(model_state))]
    problems += [f"{key}: in the detector, not in the checkpoint" for key in sorted(set(model_state) - set(expected))
                 if key.startswith(prefix) and not key.endswith(("rel_pos_h", "rel_pos_w"))]
    for key in sorted(set(expected) & set(model_state)):
        loaded, wanted = model_state[key], expected[key]
        if loaded.shape != wanted.shape:
            problems.append(f"{key}: shape {tuple(loaded.shape)} in the detector, {tuple(wanted.shape)} in the checkpoint")
        elif compare_values and not torch.equal(loaded.detach().cpu().to(wanted.dtype), wanted.detach().cpu()):
            problems.append(f"{key}: not loaded (values differ from the checkpoint)")
    if problems:
        raise ValueError(f"backbone weights do not match the detector ({len(problems)}):\n  "
                         + "\n  ".join(problems[:12]))
