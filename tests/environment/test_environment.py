"""The environments a user builds: environment.yml agrees with the pinned requirements, make with
PY= uses a given environment (never building .venv, never FAISS over an existing FAISS), and the
command lines answer help at once."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_environment_yml_agrees_with_the_requirements():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"]  # everything else comes through pip
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert "-r requirements.txt" in pip_section and "-r requirements-transfer.txt" in pip_section
    development = _pins(ROOT / "requirements-dev.txt")
    for line in pip_section:
        if "==" in line:
            name, version = line.split("==")
            assert development.get(name.lower()) == version, line  # the tested pins
    assert not any("faiss-gpu" in line for line in pip_section)  # FAISS-GPU is opt-in (torch is the GPU default)
    assert _pins(ROOT / "requirements-transfer.txt").keys() >= {"pycocotools", "shapely", "setuptools"}
    assert "detectron2.git@" in (ROOT / "environment.yml").read_text()  # the tested commit, pinned


# detectron2's install_requires at the pinned commit 02b5c4e (its setup.py), for the pins it shares with us.
DETECTRON2_REQUIRES = {"omegaconf": ">=2.1,<2.4", "fvcore": ">=0.1.5,<0.1.6", "iopath": ">=0.1.7,<0.1.10",
                       "hydra-core": ">=1.1"}


def test_one_set_of_pins_holds_with_and_without_detectron2():
    """Installing detectron2 must not move a pin (it once downgraded omegaconf 2.4.0 to 2.3.1)."""
    from packaging.specifiers import SpecifierSet

    pins = {**_pins(ROOT / "requirements.txt"), **_pins(ROOT / "requirements-transfer.txt")}
    for package, requirement in DETECTRON2_REQUIRES.items():
        assert package in pins, package
        assert pins[package] in SpecifierSet(requirement), (package, pins[package], requirement)
    assert pins["setuptools"] in SpecifierSet("<81")  # detectron2's model_zoo imports pkg_resources


FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$CALLS"
case "$*" in
  *"import faiss"*) [ "$HAS_FAISS" = 1 ] ;;
  *) exit 0 ;;
esac
"""


@pytest.mark.parametrize("has_faiss", [True, False])
def test_make_setup_with_a_given_python_uses_it(tmp_path, has_faiss):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    environment = {**os.environ, "CALLS": str(tmp_path / "calls"), "HAS_FAISS": "1" if has_faiss else "0"}
    subprocess.run(["make", "-s", "setup", f"PY={fake}", f"VENV={tmp_path / 'never'}", f"STAMPS={tmp_path / 'stamps'}"],
                   cwd=ROOT, check=True, env=environment, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not (tmp_path / "never").exists()  # no virtual environment built
    assert any("-r requirements.txt" in call and "pytest==" in call for call in calls)
    assert any("faiss-cpu==" in call for call in calls) == (not has_faiss)


@pytest.mark.parametrize("command", [["pretrain", "--help"], ["evaluate", "--help"]])
def test_help_answers_within_a_second(command):
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert completed.returncode == 0 and "exit status" in completed.stdout
    assert elapsed < 1.0, elapsed


@pytest.mark.slow
def test_make_test_runs_in_a_second_environment(tmp_path):
    """A second virtual environment given as PY (its packages: this one's, through a .pth file): make
    builds no .venv, leaves its FAISS alone, and runs the tests with that interpreter."""
    import site
    import sysconfig

    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "venv", str(other)], check=True)
    python = other / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "suite.pth").write_text(sysconfig.get_paths()["purelib"] + "\n" + "\n".join(site.getsitepackages()))
    completed = subprocess.run(["make", "test", f"PY={python}", f"VENV={tmp_path / 'never'}",
                                f"STAMPS={tmp_path / 'stamps'}", "PYTEST_ARGS=-q -p no:cacheprovider tests/common/test_config.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert f"{python} -m pytest" in completed.stdout and "passed" in completed.stdout
    assert not list(Path(purelib).glob("faiss*"))  # it had a FAISS (through the .pth): none installed over it
    assert not (tmp_path / "never").exists()
