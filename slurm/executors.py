"""Executors: `slurm` (submitit on a cluster), `local` (submitit's local executor), `inline`
(in-process, for tests and the demo), `auto` (SLURM when `sbatch` exists, else local).

Every stage runs as `StageTask(kind, config)`: one task per GPU, the DDP environment exported
from SLURM (or submitit's local variables), then the stage's `main(config)`. Preemption and
timeouts reach the training loop as a recorded signal; the loop checkpoints at its next step
boundary and hands over to submitit's handler, which calls `checkpoint()` (resubmit the same task,
which resumes from the run directory) and requeues.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from omegaconf import OmegaConf

from common.config import ConfigError, apply_overrides
from plans.registry import stage_record
from slurm.snapshot import MAX_FILE_MB

EXECUTORS = ("auto", "slurm", "local", "inline")


@dataclass
class ClusterConfig:
    """SLURM settings, from flags or a cluster profile YAML file (`--profile cluster.yaml`)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    cpus_per_gpu: int = 10
    mem_gb_per_gpu: int = 60
    max_hours: float = 72.0  # the partition's time limit; longer stages requeue
    signal_delay_s: int = 120  # SIGUSR2 this long before the limit: time to reach a step boundary
    max_num_timeout: int = 100  # requeues after timeouts before giving up
    extra_sbatch: dict[str, Any] = field(default_factory=dict)  # e.g. {"exclusive": True, "mail-type": "END"}
    # Untracked files larger than this (MB) are left out of code snapshots (slurm/snapshot.py), and
    # named at submission: data or weights lying in the checkout would be copied into every snapshot.
    snapshot_max_file_mb: float = MAX_FILE_MB

    def check(self) -> None:
        if self.cpus_per_gpu < 1 or self.mem_gb_per_gpu < 1 or self.max_hours <= 0:
            raise ConfigError("cpus_per_gpu, mem_gb_per_gpu and max_hours must be positive")
        if self.snapshot_max_file_mb < 0:
            raise ConfigError(f"snapshot_max_file_mb must be >= 0, got {self.snapshot_max_file_mb}")


def load_cluster_config(profile: str | None, overrides: list[str]) -> ClusterConfig:
    config = ClusterConfig()
    if profile:
        merged = OmegaConf.merge(OmegaConf.structured(config), OmegaConf.load(profile))
        config = OmegaConf.to_object(merged)
    return apply_overrides(config, overrides)


def resolve_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def run_stage(kind: str, config: Any) -> dict:
    """Run one stage in this process, through its stage record."""
    return stage_record(kind).main(config)


class StageTask(submitit.helpers.Checkpointable):
    """What a submitit job runs. Resubmitting the same task resumes from the run directory.

    `code_dir`: the code snapshot the job was submitted from (slurm/snapshot.py), kept first on
    sys.path for imports made while the stage runs; `workdir`: the submission's working directory,
    where the config's relative paths point."""

    def __init__(self, kind: str, config: Any, code_dir: str = "", workdir: str = ""):
        self.kind, self.config = kind, config
        self.code_dir, self.workdir = code_dir, workdir or os.getcwd()

    def __call__(self) -> dict:
        if self.code_dir and sys.path[:1] != [self.code_dir]:
            sys.path.insert(0, self.code_dir)
        os.chdir(self.workdir)
        environment = submitit.JobEnvironment()
        if environment.num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch.distributed; devices stay
            # visible and common.runtime picks cuda:LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return run_stage(self.kind, self.config)


def make_executor(executor: str, folder: Path, cluster: ClusterConfig) -> submitit.Executor:
    if executor == "slurm":
        return submitit.SlurmExecutor(folder=folder, max_num_timeout=cluster.max_num_timeout)
    return submitit.LocalExecutor(folder=folder, max_num_timeout=cluster.max_num_timeout)


def job_parameters(executor: str, name: str, nodes: int, gpus_per_node: int, hours: float,
                   cluster: ClusterConfig, dependencies: list[str]) -> dict[str, Any]:
    """submitit parameters of one stage: one task per GPU (one task on CPU-only stages)."""
    tasks = max(gpus_per_node, 1)
    # Whole minutes, at least one: SLURM takes --time=0 for no limit at all.
    minutes = max(1, round(min(hours, cluster.max_hours) * 60))
    if executor == "local":
        return {"timeout_min": minutes, "gpus_per_node": gpus_per_node, "tasks_per_node": tasks,
                "signal_delay_s": cluster.signal_delay_s}
    parameters: dict[str, Any] = {
        "job_name": name, "nodes": nodes, "ntasks_per_node": tasks, "cpus_per_task": cluster.cpus_per_gpu,
        "mem": f"{cluster.mem_gb_per_gpu * tasks}GB", "time": minutes, "signal_delay_s": cluster.signal_delay_s,
        "additional_parameters": dict(cluster.extra_sbatch),
    }
    if gpus_per_node:
        parameters["gpus_per_node"] = gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            parameters[key] = getattr(cluster, key)
    if dependencies:
        parameters["dependency"] = "afterok:" + ":".join(dependencies)
    return parameters
