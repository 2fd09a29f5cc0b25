"""Run directories, the contract between stages.

<output_root>/<name>-<config hash>/
    config.yaml       resolved config
    provenance.json   git commit and dirty flag, package versions, host, devices, world size
    metrics.jsonl     one JSON object per logged step
    checkpoints/      checkpoint_<step>.pt
    result.json       final metrics + config hash, written last and atomically
A directory without result.json is incomplete and is never reported.
"""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import atomic_write_text
from common.config import config_hash, load_yaml, save_yaml

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchvision", "timm", "numpy", "omegaconf", "faiss-cpu", "faiss-gpu")


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(["git", *arguments], cwd=REPOSITORY_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


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
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
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


class RunDirectory:
    """One stage run's folder. Create with `RunDirectory.for_config` (named by name + config hash)."""

    def __init__(self, path: Path, config_digest: str = "", experiment_digest: str = ""):
        self.path = Path(path)
        self.config_digest = config_digest
        # The config hash without the seed: runs of one experiment over several seeds share it,
        # which is what the reports check before averaging them.
        self.experiment_digest = experiment_digest

    @classmethod
    def for_config(cls, output_root: Path, name: str, config: Any,
                   exclude: tuple[str, ...] = ()) -> "RunDirectory":
        digest = config_hash(config, exclude)
        return cls(Path(output_root) / f"{name}-{digest}", digest, experiment_hash(config, exclude))

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    def is_complete(self) -> bool:
        return self.result_path.is_file()

    def prepare(self, config: Any, world_size: int = 1) -> None:
        """Create the folder and write config + provenance (called on the main process only)."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, self.path / "config.yaml")
        atomic_write_text(json.dumps(provenance(world_size), indent=2), self.path / "provenance.json")

    def load_config(self, config_class: type) -> Any:
        return load_yaml(self.path / "config.yaml", config_class)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_result(self, result: dict[str, Any]) -> None:
        record = {**result, "config_hash": self.config_digest, "experiment_hash": self.experiment_digest}
        prov = self.path / "provenance.json"
        if prov.is_file():
            record["provenance"] = json.loads(prov.read_text())
        atomic_write_text(json.dumps(record, indent=2), self.result_path)

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text())
