"""Shared fixtures: tiny configs and generated data. Tests run on CPU unless marked gpu."""
from __future__ import annotations

import dataclasses

import pytest
import torch

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
