"""Shared fixtures: tiny configs and generated data. Tests run on CPU unless marked gpu."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from common.config import apply_overrides
from pretrain.configs import PretrainConfig, preset


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores in CI: more intra-op threads only add contention.
    torch.set_num_threads(2)


@pytest.fixture
def debug_config(tmp_path) -> PretrainConfig:
    """The debug_cpu preset writing into a temporary folder, without progress bars."""
    config = preset("debug_cpu")
    return dataclasses.replace(config, run=dataclasses.replace(config.run, output_root=str(tmp_path / "runs"),
                                                               progress=False))


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """Training installs preemption handlers; leave the test process's own handlers as they were."""
    import signal

    from common import preemption

    saved = {s: signal.getsignal(s) for s in preemption.DEFAULT_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    preemption.reset()
    preemption._previous.clear()


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory) -> Path:
    """A finished debug_cpu pretraining run (2 epochs, 16 steps) that evaluation tests read."""
    from pretrain.train import main

    root = tmp_path_factory.mktemp("pretrained")
    config = apply_overrides(preset("debug_cpu"), [f"run.output_root={root}", "run.progress=false",
                                                   "optim.epochs=2"])
    return Path(main(config)["run_dir"])
