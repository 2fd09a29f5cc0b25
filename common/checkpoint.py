"""Atomic checkpoint files: a reader never sees a partial file, a writer killed mid-save loses
nothing but the checkpoint it was writing.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from common.errors import DiskWriteError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{8})\.pt$")
# Temporaries of atomic writes: ".<name>.tmp-<pid>@<host>" (and ".<name>.tmp.<pid>" from older versions;
# "<name>.partial-<pid>" is a code snapshot's staging folder from older versions, slurm/snapshot.py).
TEMPORARY_PATTERN = re.compile(r"^(?:\..+\.tmp(?:-(?P<pid>\d+)@(?P<host>.+)|\.(?P<legacy_pid>\d+))"
                               r"|.+\.partial-(?P<partial_pid>\d+))$")


def _temporary_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{socket.gethostname()}")


@contextlib.contextmanager
def _atomic_target(path: Path, mode: str) -> Iterator:
    """Write to a temporary file in the same folder, fsync, then rename over `path`. On failure the
    temporary is removed and a full disk is reported as a DiskWriteError naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_for(path)
    try:
        with open(temporary, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if _is_out_of_space(error):
            raise DiskWriteError(errno.ENOSPC, f"no space left on the device writing {path}; free space "
                                 "(or move the run to another filesystem) and run the same command again: "
                                 "it resumes from the last complete checkpoint") from None
        raise


def _is_out_of_space(error: BaseException) -> bool:
    """torch.save reports ENOSPC as a RuntimeError from its zip writer ('unexpected pos')."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, RuntimeError) and ("unexpected pos" in str(error) or "No space left" in str(error))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    with _atomic_target(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_write_text(text: str, path: Path) -> None:
    with _atomic_target(path, "w") as handle:
        handle.write(text)


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(directory: Path, keep: Callable[[Path], bool] = lambda path: False) -> list[Path]:
    """Delete the temporaries of failed or killed atomic writes in `directory` (files, or folders being
    filled before their rename): those written on this host by a process that is no longer alive
    (another host's cannot be checked and are left). Returns what was removed."""
    removed = []
    if not Path(directory).is_dir():
        return removed
    host = socket.gethostname()
    for entry in Path(directory).iterdir():
        match = TEMPORARY_PATTERN.match(entry.name)
        if not match or keep(entry):
            continue
        pid = int(match.group("pid") or match.group("legacy_pid") or match.group("partial_pid"))
        if (match.group("host") in (None, host)) and pid != os.getpid() and not _process_is_alive(pid):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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


def latest_readable_checkpoint(directory: Path) -> tuple[int, dict] | None:
    """(step, state) of the newest checkpoint that loads; an unreadable newer one (truncated, or
    holding objects the safe loader refuses) is skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return step, load_torch(path)
        except Exception as error:  # a truncated file raises from deep inside the unpickler
            reason = ("it holds Python objects the safe loader refuses" if isinstance(error, pickle.UnpicklingError)
                      else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            warnings.warn(f"checkpoint {path} is unreadable ({reason}); falling back to the previous one")
    return None


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The state of the newest checkpoint that loads (see latest_readable_checkpoint), or None."""
    found = latest_readable_checkpoint(directory)
    return None if found is None else found[1]


def prune_checkpoints(directory: Path, keep_last: int, milestone_every: int = 0) -> None:
    """Delete all but the newest `keep_last` checkpoints, keeping steps divisible by `milestone_every`,
    and the temporaries of killed writers (never a live process's)."""
    remove_stale_temporaries(directory)
    checkpoints = list_checkpoints(directory)
    for step, path in checkpoints[: max(len(checkpoints) - keep_last, 0)]:
        if milestone_every and step % milestone_every == 0:
            continue
        path.unlink(missing_ok=True)
