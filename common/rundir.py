"""Run directories, the contract between stages.

<output_root>/<name>-<config hash>/
    config.yaml       resolved config
    provenance.json   git commit and dirty flag, package versions, host, devices, world size
    metrics.jsonl     one JSON object per logged step (line-atomic appends; a damaged line is skipped)
    checkpoints/      checkpoint_<step>.pt
    result.json       final metrics + config hash, written last and atomically
    .lock             held (flock) by the one process that owns the run; released by the OS when it dies
A directory without result.json is incomplete and is never reported. provenance.json keeps the first
start's record and appends one record per restart under "restarts".
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from common.checkpoint import atomic_write_text, remove_stale_temporaries
from common.config import config_hash, load_yaml, save_yaml
from common.errors import RunDirectoryBusy


# Lock files held by this process: resolved run path -> open handle (the flock lives as long as it).
_HELD_LOCKS: dict[Path, Any] = {}


def releases_run_locks(function: Callable) -> Callable:
    """Release, when `function` returns or raises, the run-directory locks it took (a stage's main;
    in-process launchers run several stages one after another)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = set(_HELD_LOCKS)
        try:
            return function(*args, **kwargs)
        finally:
            for path in set(_HELD_LOCKS) - before:
                _HELD_LOCKS.pop(path).close()
    return wrapper

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchvision", "timm", "numpy", "omegaconf", "faiss-cpu", "faiss-gpu", "detectron2", "pycocotools")


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(["git", *arguments], cwd=REPOSITORY_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


EXPERIMENTS_FILE = "experiments.json"  # further plan stages a finished run serves (see record_experiment)


def record_experiment(run_dir: Path, key: str) -> None:
    """Note that the plan stage `key` is served by the finished run `run_dir`, whose result.json
    names the stage that ran it. Two plans asking for the same config share one run (e.g. Table 5's
    Baseline and Table 6's m = 1); the reports find it under each stage key."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    path = run_dir / EXPERIMENTS_FILE
    known = json.loads(path.read_text()) if path.is_file() else []
    if key != result.get("experiment") and key not in known:
        atomic_write_text(json.dumps(sorted({*known, key}), indent=2), path)


CODE_RECORD = "code.json"  # in a code snapshot (slurm/snapshot.py), which is no git checkout


def code_identity() -> dict[str, Any]:
    """Commit and dirty flag of the running code: from a snapshot's record (with the digest of its
    uncommitted changes), else from git."""
    record_path = REPOSITORY_ROOT / CODE_RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        return {"git_commit": record["commit"], "git_dirty": record["dirty"],
                "code_diff_digest": record["diff_digest"], "code_snapshot": str(REPOSITORY_ROOT)}
    return {"git_commit": _git("rev-parse", "HEAD") or "unknown",
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def provenance(world_size: int = 1) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    devices = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if torch.cuda.is_available() else ["cpu"])
    return {
        **code_identity(),
        "packages": versions,
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "devices": devices,
        "world_size": world_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def experiment_hash(config: Any, exclude: tuple[str, ...] = ()) -> str:
    """The config hash without the seed: the runs of one experiment over several seeds share it."""
    return config_hash(config, (*exclude, "run.seed"))


def _combine(digest: str, data_fingerprint: str) -> str:
    return hashlib.sha256(f"{digest}:{data_fingerprint}".encode()).hexdigest()[:len(digest)]


class RunDirectoryUnwritable(ValueError):
    """The run directory (or the output root it goes in) cannot be written: refused before any work."""


@contextlib.contextmanager
def refusing_unwritable(folder: Path) -> Iterator[None]:
    """Turn the OS refusing a write in `folder` (permissions, a read-only file system) into one
    RunDirectoryUnwritable naming it (an `error:` line and exit status 2 on the command line)."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise RunDirectoryUnwritable(f"cannot write to {folder} ({error.strerror or error}): give this user "
                                     "write access to it, or choose another run.output_root") from None


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write a probe file in it, so that a folder this process cannot write
    is refused before the run starts, not found out as a traceback at its first save."""
    with refusing_unwritable(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass


class RunDirectory:
    """One stage run's folder. Create with `RunDirectory.for_config` (named by name + config hash)."""

    def __init__(self, path: Path, config_digest: str = "", experiment_digest: str = ""):
        self.path = Path(path)
        self.config_digest = config_digest
        # The config hash without the seed: runs of one experiment over several seeds share it,
        # which is what the reports check before averaging them.
        self.experiment_digest = experiment_digest

    @classmethod
    def for_config(cls, output_root: Path, name: str, config: Any, exclude: tuple[str, ...] = (),
                   data_fingerprint: str = "") -> "RunDirectory":
        """Named by `name` and the hash of the config without `exclude`, and of the data's
        fingerprint when it has one (common.datasets.dataset_fingerprint)."""
        digest, experiment = config_hash(config, exclude), experiment_hash(config, exclude)
        if data_fingerprint:
            digest, experiment = (_combine(part, data_fingerprint) for part in (digest, experiment))
        return cls(Path(output_root) / f"{name}-{digest}", digest, experiment)

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    def is_complete(self) -> bool:
        return self.result_path.is_file()

    def acquire(self, wait: bool = False) -> None:
        """Take the run directory for this process (an exclusive flock on `.lock`, released by the OS
        when the process dies, so a killed run never blocks its own resume). If another live process
        holds it: wait for it (`wait`), or raise RunDirectoryBusy saying who holds it."""
        key = self.path.resolve()
        if key in _HELD_LOCKS:
            return
        with refusing_unwritable(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise self._busy(holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _HELD_LOCKS[key] = handle

    def refuse_if_busy(self) -> None:
        """Raise what `acquire` would raise when another live process holds the directory, creating
        nothing (a dry run's check). The probe holds the lock for an instant: an `acquire` at that very
        instant is refused as if the directory were busy, and may simply be run again."""
        path = self.path / ".lock"
        if self.path.resolve() in _HELD_LOCKS or not path.is_file():
            return
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(handle.read()) from None
            fcntl.flock(handle, fcntl.LOCK_UN)

    def _busy(self, holder: str) -> RunDirectoryBusy:
        return RunDirectoryBusy(
            f"{self.path} is in use by {holder.strip() or 'another process'}: the same run is already going. Wait "
            "for it to finish (or stop it), or add --wait to start once it is released.")

    def prepare(self, config: Any, world_size: int = 1, stage: str = "") -> None:
        """Create the folder, remove what failed writes left, write config and provenance (with the
        stage's name; the first start's record is kept, each restart appends one). Main process only,
        lock held."""
        for folder in (self.path, self.checkpoint_dir):  # before a resume finds it out at its first save
            check_writable(folder)
        for folder in (self.path, self.checkpoint_dir):
            remove_stale_temporaries(folder)
        save_yaml(config, self.path / "config.yaml")
        record = {"stage": stage, **provenance(world_size)} if stage else provenance(world_size)
        path = self.path / "provenance.json"
        try:
            first = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            first = None
        if isinstance(first, dict):
            first.setdefault("restarts", []).append(record)
            record = first
        atomic_write_text(json.dumps(record, indent=2), path)

    def load_config(self, config_class: type) -> Any:
        return load_yaml(self.path / "config.yaml", config_class)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line in a single write; after a cut line (a kill or a full disk mid-append)
        start on a fresh line so that the damage stays confined to that line."""
        line = (json.dumps(record) + "\n").encode()
        descriptor = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            if size:
                with open(self.metrics_path, "rb") as handle:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        line = b"\n" + line
            os.write(descriptor, line)
        finally:
            os.close(descriptor)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every readable record; damaged lines are skipped with one warning naming them."""
        if not self.metrics_path.is_file():
            return []
        records, damaged = [], []
        for number, line in enumerate(self.metrics_path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                damaged.append(number)
        if damaged:
            warnings.warn(f"{self.metrics_path}: skipped {len(damaged)} damaged line(s) "
                          f"({', '.join(map(str, damaged[:5]))}), left by a kill or a full disk")
        return records

    def truncate_metrics(self, key: str, last: float) -> None:
        """Keep only the readable records with record[key] <= last: a resumed run logs each step once."""
        if not self.metrics_path.is_file():
            return
        kept = [r for r in self.read_metrics() if r.get(key, 0) <= last]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.metrics_path)

    def write_result(self, result: dict[str, Any]) -> None:
        record = {**result, "config_hash": self.config_digest, "experiment_hash": self.experiment_digest}
        prov = self.path / "provenance.json"
        if prov.is_file():
            record["provenance"] = json.loads(prov.read_text())
        atomic_write_text(json.dumps(record, indent=2), self.result_path)

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text())
