"""Atomic checkpoint files: a reader never sees a partial file, a writer killed mid-save loses
nothing but the checkpoint it was writing.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{8})\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_torch(path: Path) -> dict:
    """Load with torch's safe unpickler (tensors, numbers, strings and containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The newest checkpoint that loads; an unreadable newer one is skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return load_torch(path)
        except Exception as error:  # a truncated file raises from deep inside the unpickler
            warnings.warn(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                          "falling back to the previous one")
    return None


def prune_checkpoints(directory: Path, keep_last: int, milestone_every: int = 0) -> None:
    """Delete all but the newest `keep_last` checkpoints, keeping steps divisible by `milestone_every`,
    and the temporaries of killed writers."""
    for stale in Path(directory).glob(".checkpoint_*.tmp.*"):  # left by writers killed mid-save
        if not stale.name.endswith(f".tmp.{os.getpid()}"):
            stale.unlink(missing_ok=True)
    checkpoints = list_checkpoints(directory)
    for step, path in checkpoints[: max(len(checkpoints) - keep_last, 0)]:
        if milestone_every and step % milestone_every == 0:
            continue
        path.unlink(missing_ok=True)
