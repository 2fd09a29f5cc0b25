"""Where an evaluated encoder comes from: a training run directory (through the encoder record the
training stage writes there) or an encoder file.

An encoder file is a safetensors file of timm ViT weights (timm key names, no classifier) whose
metadata describes the architecture (arch, patch_size, image_size, num_heads). `evaluate.convert`
writes them from our runs and from published PatchMix, MoCo v3, DINO and timm checkpoints.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from common.checkpoint import atomic_write_text, latest_readable_checkpoint, list_checkpoints
from common.config import ConfigError, added_field
from common.rundir import experiment_hash
from common.runtime import NON_RESULT_FIELDS
from common.vit import VIT_SIZES, build_vit


@dataclass
class SourceConfig:
    """Exactly one of `run_dir` (a pretraining run) and `encoder_file` (a converted checkpoint)."""

    run_dir: str = ""  # a pretraining run directory (--from)
    encoder_file: str = ""  # an encoder file from evaluate convert/export (--encoder-file)
    # auto (momentum if the run has one, else base) | momentum | base | random (the run's architecture,
    # freshly initialised with the run's seed: the reference row showing what pretraining added)
    encoder: str = "auto"
    # Evaluating a pretraining run without result.json (the newest checkpoint of an unfinished run) is
    # allowed but warned about loudly, and recorded; true: quietly (--allow-incomplete).
    allow_incomplete: bool = added_field(False)

    def check(self) -> None:
        if bool(self.run_dir) == bool(self.encoder_file):
            raise ConfigError("give exactly one of source.run_dir (--from RUN_DIR) and source.encoder_file")
        if self.encoder not in ("auto", "momentum", "base", "random"):
            raise ConfigError(f"encoder must be auto, momentum, base or random, got {self.encoder!r}")
        if self.encoder == "random" and not self.run_dir:
            raise ConfigError("source.encoder=random takes its architecture from a run: give --from RUN_DIR")


@dataclass
class EncoderSpec:
    arch: str
    patch_size: int
    image_size: int
    num_heads: int = 0  # 0 = the arch's default

    def __eq__(self, other: object) -> bool:
        """Specs that build the same encoder are equal (0 heads = the arch's default count)."""
        if not isinstance(other, EncoderSpec):
            return NotImplemented
        return (self.arch, self.patch_size, self.image_size, self.heads) == (
            other.arch, other.patch_size, other.image_size, other.heads)

    def build(self, drop_path_rate: float = 0.0) -> nn.Module:
        return build_vit(self.arch, self.patch_size, self.image_size, self.num_heads, drop_path_rate)

    @property
    def heads(self) -> int:
        """The head count, the arch's default resolved (weights alone cannot tell it)."""
        return self.num_heads or VIT_SIZES[self.arch].default_heads

    def metadata(self) -> dict[str, str]:
        return {**{key: str(value) for key, value in vars(self).items()}, "num_heads": str(self.heads)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "EncoderSpec":
        missing = {"arch", "patch_size", "image_size"} - set(metadata)
        if missing:
            raise ValueError(f"encoder file metadata lacks {sorted(missing)}; write it with evaluate.convert")
        return cls(metadata["arch"], int(metadata["patch_size"]), int(metadata["image_size"]),
                   int(metadata.get("num_heads", 0)))


@dataclass
class LoadedEncoder:
    state_dict: dict[str, torch.Tensor]  # timm ViT keys
    spec: EncoderSpec
    digest: str  # identifies the weights (for caches and result provenance)
    description: str
    origin: dict = field(default_factory=dict)  # the pretraining run's preset, seed, hashes (for reports)

    def build(self, drop_path_rate: float = 0.0) -> nn.Module:
        encoder = self.spec.build(drop_path_rate)
        encoder.load_state_dict(self.state_dict)
        return encoder


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict (names, shapes and values), independent of the file it came from."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def encoder_digest(state_dict: dict[str, torch.Tensor], spec: EncoderSpec) -> str:
    """The identity of an encoder: its weights and its architecture. The weights' shapes fix the
    width, depth, patch and input size, but not the head count (the same ViT-S weights read as 6 or 12
    heads compute different features): a count other than the arch's default is folded in, and the
    default keeps the weights' digest alone (the digest of every encoder evaluated before)."""
    weights = state_digest(state_dict)
    default = VIT_SIZES[spec.arch].default_heads
    heads = spec.num_heads or default
    if heads == default:
        return weights
    return hashlib.sha256(f"{weights}:heads={heads}".encode()).hexdigest()[:16]


def infer_spec(state_dict: dict[str, torch.Tensor], num_heads: int = 0) -> EncoderSpec:
    """Architecture from weight shapes (heads cannot be inferred: pass num_heads, 0 = arch default)."""
    if "patch_embed.proj.weight" not in state_dict or "pos_embed" not in state_dict:
        raise ValueError("not a ViT state dict: patch_embed.proj.weight or pos_embed missing")
    width, _, patch, _ = state_dict["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    arch = next((name for name, size in VIT_SIZES.items() if size.embed_dim == width and size.depth == depth), None)
    if arch is None:
        raise ValueError(f"no known ViT of width {width} and depth {depth}")
    grid = int(round((state_dict["pos_embed"].shape[1] - 1) ** 0.5))
    return EncoderSpec(arch, int(patch), grid * int(patch), num_heads)


def save_encoder_file(state_dict: dict[str, torch.Tensor], spec: EncoderSpec, path: Path,
                      description: str = "") -> Path:
    """Write timm-named ViT weights + architecture metadata as safetensors (timm-loadable)."""
    spec.build().load_state_dict(state_dict)  # refuse to write something that will not load
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path),
              metadata={**spec.metadata(), "description": description})
    return path


def load_encoder_file(path: Path) -> LoadedEncoder:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types on a file of another format
        raise ValueError(f"{path} is not a safetensors encoder file ({str(error).splitlines()[0]}). A .pt/.pth "
                         "checkpoint must be converted first: python -m evaluate convert --format "
                         "patchmix|mocov3|dino|timm IN OUT.safetensors") from None
    spec = EncoderSpec.from_metadata(metadata)
    check_fits(state, spec, str(path))
    return LoadedEncoder(state, spec, encoder_digest(state, spec),
                         metadata.get("description", str(path)))


def check_fits(state_dict: dict[str, torch.Tensor], spec: EncoderSpec, where: str) -> None:
    """Refuse, in one line, weights that do not load into the architecture `spec` names."""
    try:
        spec.build().load_state_dict(state_dict)
    except (RuntimeError, ConfigError) as error:
        details = " ".join(str(error).split())
        raise ValueError(f"{where}: the weights do not fit the architecture {spec.arch}/{spec.patch_size} at "
                         f"{spec.image_size} px with {spec.num_heads or 'default'} heads ({details[:300]}); "
                         "re-export the file, or convert it again with the right --encoder/--num-heads") from None


ENCODER_RECORD = "encoder.json"


def encoder_prefixes(has_momentum_encoder: bool) -> dict[str, str]:
    """{which encoder: its key prefix in a pretraining checkpoint's model state}, the default first."""
    if has_momentum_encoder:
        return {"momentum": "momentum_encoder.", "base": "base_encoder."}
    return {"base": "base_encoder."}


def write_encoder_record(run_dir: Path, record: dict) -> None:
    """The stage-neutral description of the encoders a training run produces (written by the stage
    that trains them): architecture (arch, patch_size, image_size, num_heads), where the weights are
    (`checkpoints` folder, `encoders`: which -> key prefix in the checkpoint's model state, `default`),
    the data it read (`data`, DataConfig fields), how its weights were drawn (`initialisation`: scheme
    and position embedding), `origin` (preset, seed, experiment and its hash), and once finished `final`
    (checkpoint, step, digest of the default encoder)."""
    atomic_write_text(json.dumps(record, indent=2), Path(run_dir) / ENCODER_RECORD)


def read_encoder_record(run_dir: Path) -> dict:
    """A run's encoder record; for runs made before records existed, the same facts read from its
    config.yaml as plain YAML."""
    run_dir = Path(run_dir)
    if (run_dir / ENCODER_RECORD).is_file():
        return json.loads((run_dir / ENCODER_RECORD).read_text())
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a pretraining run directory (no {ENCODER_RECORD} or config.yaml)")
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    model, run = config["model"], config["run"]
    try:  # the seedless hash its result records; an unfinished run's, recomputed from its config
        experiment = json.loads((run_dir / "result.json").read_text())["experiment_hash"]
    except (OSError, ValueError, KeyError):
        experiment = experiment_hash(config, NON_RESULT_FIELDS)
    encoders = encoder_prefixes(model.get("momentum_encoder", True))
    return {"arch": model["arch"], "patch_size": model["patch_size"], "image_size": model["image_size"],
            "num_heads": model.get("num_heads", 0), "checkpoints": "checkpoints", "encoders": encoders,
            "default": next(iter(encoders)), "data": config["data"], "initialisation": _initialisation(model),
            "origin": {"pretrain_preset": config.get("preset", ""), "seed": run.get("seed", 0),
                       "experiment": run.get("experiment", ""),
                       "pretrain_experiment_hash": experiment}}


def _initialisation(model: dict) -> dict[str, str]:
    """The record's "initialisation" from a config.yaml's model section (defaults: what runs made before
    these fields existed used)."""
    return {"scheme": model.get("initialisation", "moco"),
            "position_embedding": model.get("position_embedding", "learned")}


def record_spec(record: dict) -> EncoderSpec:
    return EncoderSpec(record["arch"], int(record["patch_size"]), int(record["image_size"]), int(record["num_heads"]))


def initial_state(record: dict, run_dir: Path) -> dict[str, torch.Tensor]:
    """The encoder weights a run's pretraining starts from: its architecture drawn with its seed by its
    initialisation scheme and position embedding (the record's "initialisation"; for a record written
    before that field, its run's config.yaml)."""
    initialisation, config = record.get("initialisation"), Path(run_dir) / "config.yaml"
    if initialisation is None and config.is_file():  # a record written before the field
        initialisation = _initialisation(OmegaConf.to_container(OmegaConf.load(config))["model"])
    if initialisation is None:
        warnings.warn(f"neither the encoder record nor a config.yaml of {run_dir} says how its encoder was "
                      "initialised: its random initialisation uses MoCo v3's scheme with learned position "
                      "embeddings, which may not be the run's")
        initialisation = _initialisation({})
    spec = record_spec(record)
    torch.manual_seed(int(record["origin"]["seed"]))
    return build_vit(spec.arch, spec.patch_size, spec.image_size, spec.num_heads,
                     initialisation=initialisation["scheme"],
                     position_embedding=initialisation["position_embedding"]).state_dict()


def encoder_state_from_run(run_dir: Path, which: str = "auto", allow_incomplete: bool = False) -> LoadedEncoder:
    """The evaluation encoder of a training run's newest readable checkpoint, found through its
    encoder record.

    `which='auto'` takes the record's default (the momentum encoder when the run has one, as all
    published protocols do; the base encoder otherwise, as for the published ViT-T preset);
    `which='random'` builds the run's architecture with fresh weights (no checkpoint needed).
    A run without result.json has not finished: its checkpoint is used with a loud warning (none
    with `allow_incomplete`), and `pretrain_complete: false` and the step go into the origin record.
    """
    run_dir = Path(run_dir)
    record = read_encoder_record(run_dir)
    spec = record_spec(record)
    origin = {"pretrain_run_dir": str(run_dir), **record["origin"], "encoder": which}
    if which == "random":
        state = initial_state(record, run_dir)
        return LoadedEncoder(state, spec, encoder_digest(state, spec), f"{run_dir}:random-init", origin)
    checkpoints = run_dir / record["checkpoints"]
    if not list_checkpoints(checkpoints):
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    found = latest_readable_checkpoint(checkpoints)
    if found is None:
        raise ValueError(f"none of the checkpoints in {checkpoints} is readable (truncated, or "
                         "refused by the safe loader); resume the pretraining run to write a new one")
    step, checkpoint = found
    complete = (run_dir / "result.json").is_file()
    origin["pretrain_complete"] = complete
    if not complete and not allow_incomplete:
        message = (f"{run_dir} has not finished pretraining (no result.json): evaluating its checkpoint of "
                   f"step {step}, recorded as such in result.json and in the reports. Pass --allow-incomplete "
                   "to do this without the warning.")
        print(f"\n{'!' * 80}\nWARNING: {message}\n{'!' * 80}\n", file=sys.stderr)
        warnings.warn(message)
    chosen = record["default"] if which == "auto" else which
    if chosen not in record["encoders"]:
        raise ValueError(f"{run_dir} has no {chosen} encoder (it has: {', '.join(record['encoders'])}); "
                         f"use source.encoder={record['default']}")
    prefix = record["encoders"][chosen]
    state = {k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
    origin.update(encoder=prefix.rstrip("."), checkpoint_step=step)
    return LoadedEncoder(state, spec, encoder_digest(state, spec), f"{run_dir}:{prefix.rstrip('.')}@step{step}",
                         origin)


def load_source(source: SourceConfig) -> LoadedEncoder:
    if source.run_dir:
        return encoder_state_from_run(Path(source.run_dir), source.encoder, source.allow_incomplete)
    return load_encoder_file(Path(source.encoder_file))


@functools.lru_cache(maxsize=4)
def planned_source(run_dir: str, encoder_file: str, encoder: str) -> LoadedEncoder:
    """A source's weights, loaded once for all the stages a launcher plans on them (a ViT-B checkpoint
    is ~1 GB); quietly, also for an unfinished run (the stage itself warns when it runs)."""
    return load_source(SourceConfig(run_dir=run_dir, encoder_file=encoder_file, encoder=encoder,
                                    allow_incomplete=True))
