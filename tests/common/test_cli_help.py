"""Help that answers: field documentation from one source, preset listing, Hydra habits, exit statuses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import exit_status
from common.config import ConfigError, apply_overrides
from common.config_help import describe
from common.errors import DiskWriteError, NonFiniteLossError, RunDirectoryBusy, TrainingAborted
from evaluate.configs import EvalConfig
from pretrain.configs import preset

ROOT = Path(__file__).resolve().parents[2]


def _cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain", *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_every_field_has_a_type_value_and_meaning():
    for config in (preset("debug_cpu"), EvalConfig()):
        for line in describe(config):
            assert " - " in line, f"no meaning next to this field in its dataclass: {line}"


def test_help_config_marks_what_a_preset_changes():
    text = _cli("--preset", "imagenet_vit_s16_300ep_official", "--help-config").stdout
    assert "* loss.origin_smoothing: float = 0.1  (default 0.0)  - Label smoothing of the origin-to-origin" in text
    assert "  loss.temperature: float = 0.2  - tau of every InfoNCE term" in text


def test_list_presets_filters_and_summarises():
    lines = _cli("--list-presets", "cifar10_", "s2", "m3").stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["cifar10_vit_s2_800ep_m3_official", "cifar10_vit_s2_800ep_m3_paper"]
    assert "Table 6" in lines[0] and "vit_small/2" in lines[0] and "800 ep" in lines[0] and lines[0].endswith("official")


def test_mistyped_and_flavourless_presets_suggest_every_flavour():
    completed = _cli("--preset", "imagenet_vit_s16_300ep")
    assert completed.returncode == 2
    assert "imagenet_vit_s16_300ep_official, imagenet_vit_s16_300ep_paper" in completed.stderr
    assert "cifar10_vit_s2_800ep_official" in _cli("--preset", "cifar10_vit_s2_800ep_oficial").stderr


@pytest.mark.parametrize("override, message", [
    ("+optim.epochs=3", "Hydra's syntax to add or delete a key; .* write optim.epochs=VALUE"),
    ("~run.seed", "write run.seed=VALUE"),
    ("optim.base_lr.scale=2", "'optim.base_lr' is a value, not a section: .* write optim.base_lr=VALUE"),
])
def test_hydra_habits_say_what_to_write(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("debug_cpu"), [override])


def test_exit_statuses_are_distinct():
    assert exit_status(ConfigError("x")) == exit_status(RunDirectoryBusy("x")) == exit_status(FileNotFoundError()) == 2
    assert exit_status(NonFiniteLossError("x")) == 3
    assert exit_status(TrainingAborted("x")) == exit_status(DiskWriteError(28, "x")) == 4
