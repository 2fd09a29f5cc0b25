"""Device, precision and seeding: resolved from config fields, never hard-coded."""
from __future__ import annotations

from typing import ClassVar

import contextlib
import hashlib
import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from common.config import ConfigError, added_field
from common.dist import local_rank, world_size
from common.tracking import check_loggers


def resolve_device(name: str) -> torch.device:
    """'auto' -> the local CUDA device when present (per LOCAL_RANK), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
        torch.cuda.set_device(local_rank())
        return torch.device("cuda", local_rank())
    return torch.device(name)


# torch's own choice, kept so that a stage asking for the default gets it back after an earlier stage of
# the same process (the inline executor) asked for fewer.
DEFAULT_CPU_THREADS = torch.get_num_threads()


def set_cpu_threads(count: int) -> None:
    """Use `count` intra-op threads in this process (run.cpu_threads; 0: torch's default)."""
    torch.set_num_threads(count or DEFAULT_CPU_THREADS)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on GPU, fp32 on CPU (CPU bf16 autocast is slower than fp32 on most hosts)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"precision {name!r} is not one of auto, {', '.join(table)}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision=fp16 (the official presets' published fp16 autocast with loss "
                          "scaling) needs a CUDA device; add run.precision=fp32 (or bf16) to run on CPU")
    return table[name]


def batch_per_process(global_batch: int, field_name: str, multiple: int = 1) -> int:
    """The per-process share of a global batch (a config field, named in the error), which must be a
    whole multiple of `multiple` (Mixup pairs images: 2)."""
    processes = world_size()
    if global_batch % (processes * multiple):
        raise ValueError(f"{field_name}={global_batch} does not split into {processes} process(es)"
                         + (f" with a multiple of {multiple} each" if multiple > 1 else ""))
    return global_batch // processes


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from (seed, epoch, index, ...) so randomness never depends on how the
    work is split across processes, loader workers or restarts."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


@dataclass
class RunConfig:
    """Where and how a stage runs; most of it does not change results (see NON_RESULT_FIELDS)."""
    RANGES: ClassVar[dict[str, str]] = {"seed": "[0, inf)", "checkpoint_every_steps": "[1, inf)",
        "keep_last_checkpoints": "[1, inf)", "milestone_every_epochs": "[0, inf)",
        "log_every_steps": "[1, inf)", "max_skipped_steps": "[0, inf)", "collapse_warning": "[0, inf)",
        "cpu_threads": "[0, inf)"}

    name: str = "run"  # run folder name (+ config hash); presets set it
    output_root: str = "runs"  # where run folders go
    experiment: str = ""  # free-form tag recorded in result.json (e.g. the plan's row), not hashed
    seed: int = 0  # everything random derives from it (part of the hash)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    checkpoint_every_steps: int = 500  # steps (epochs for evaluations) between checkpoints
    keep_last_checkpoints: int = 2  # newest checkpoints kept on disk
    milestone_every_epochs: int = 0  # also keep the checkpoints of every N-th epoch (0 = none)
    log_every_steps: int = 10  # also the period of the cross-rank health / preemption check
    max_skipped_steps: int = 100  # fp16 steps skipped for non-finite gradients before aborting
    collapse_warning: float = 0.1  # warn when std(normalised keys) x sqrt(dim) falls below this
    progress: bool = True  # progress bar on a terminal
    wait_for_lock: bool = added_field(False)  # another process owns the run directory: wait for it instead of exiting
    # Start this new run from the newest readable checkpoint of another run (its weights, optimizer
    # and step), e.g. after a NaN stop with a lower learning rate; recorded in provenance and result.
    resume_from: str = added_field("")
    # torch's intra-op threads in this process (0: torch's default, one per core). On a small CPU host
    # one thread beside one loader worker fills two cores without oversubscribing them (the Fashion-MNIST
    # cpu scale: 0.29 -> 0.23 s per step). Like the device, it changes floating-point sums, not the recipe.
    cpu_threads: int = added_field(0)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # beside metrics.jsonl: tensorboard, wandb
    wandb_project: str = "patchmix"  # W&B project of run.loggers=[wandb] (run id: the run directory's name)
    wandb_mode: str = "online"  # online | offline (nodes without internet; `wandb sync` later) | disabled

    def check(self) -> None:
        if not RUN_NAME.fullmatch(self.name) or ".." in self.name:
            raise ConfigError(f"run.name {self.name!r} must be a plain folder name: letters, digits and "
                              "._+=- (no '/', no '..', not empty), e.g. run.name=my-ablation")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.wandb_mode not in ("online", "offline", "disabled"):
            raise ConfigError(f"wandb_mode must be online, offline or disabled, got {self.wandb_mode!r}")
        try:
            check_loggers(self.loggers)
        except ValueError as error:
            raise ConfigError(str(error)) from None


# Fields that decide where or how verbosely a run happens, not what it computes: left out of the
# config hash so that moving the data or changing the logging reuses a finished run.
NON_RESULT_FIELDS = (
    "run.name", "run.output_root", "run.experiment", "run.device", "run.cpu_threads", "run.checkpoint_every_steps",
    "run.keep_last_checkpoints", "run.milestone_every_epochs", "run.log_every_steps", "run.progress",
    "run.max_skipped_steps", "run.collapse_warning", "run.wait_for_lock", "run.loggers", "run.wandb_project",
    "run.wandb_mode", "data.max_bad_images",
    "data.root", "data.num_workers", "data.download",
)
