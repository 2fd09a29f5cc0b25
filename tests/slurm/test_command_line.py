"""List and number options of the launcher and the reports: one parser each, and every bad form is one
`error:` line naming the option, exit status 2, with nothing written."""
from __future__ import annotations

import re

import pytest

from common.cli import parse_items, parse_seeds, parse_whole_number
from common.config import ConfigError
from reports.__main__ import main as reports_main
from slurm.__main__ import main as slurm_main

# Seeds that would otherwise raise a traceback or silently become other seeds, with what the error names.
BAD_SEEDS = [
    ("0,x", "'x' is not a whole number"),
    ("1.5", "'1.5' is not a whole number"),
    ("012", "leading zero"),
    ("0,,1", "empty"),
    ("0,1,", "empty"),
    ("-1", "negative"),
    ("0,1,0", "seed 0 is given twice"),
    ("", "empty"),
    ("  ", "empty"),
    ("+1", "'+1' is not a whole number"),
    ("1e3", "'1e3' is not a whole number"),
    ("4294967296", "numpy"),
]


def test_seed_lists_are_parsed_plainly():
    assert parse_seeds("0,1,2") == (0, 1, 2)
    assert parse_seeds(" 0, 1 ") == (0, 1)  # whitespace around items is no item
    assert parse_seeds("0 1") == (0, 1)
    assert parse_seeds("10,0") == (10, 0)  # the order given
    assert parse_seeds("4294967295") == (2**32 - 1,)
    for text, named in BAD_SEEDS:
        with pytest.raises(ConfigError, match=re.escape(named)) as error:
            parse_seeds(text)
        assert "--seeds" in str(error.value) and "\n" not in str(error.value)


def test_a_leading_zero_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as error:
        parse_seeds("0,012")
    message = str(error.value)
    assert "012" in message and "12" in message and "octal" in message and "write 12" in message


def test_items_and_whole_numbers():
    assert parse_items("cifar10, cifar100", "--datasets", "dataset") == ("cifar10", "cifar100")
    for text, named in (("cifar10,,cifar100", "empty"), ("cifar10,cifar10", "given twice"), ("", "empty")):
        with pytest.raises(ConfigError, match=named):
            parse_items(text, "--datasets", "dataset")
    assert parse_whole_number("3", "--jobs", minimum=1) == 3
    for text, named in (("0", ">= 1"), ("02", "leading zero"), ("x", "not a whole number"), ("-1", "negative")):
        with pytest.raises(ConfigError, match=named):
            parse_whole_number(text, "--jobs", minimum=1)


def _refusal(capsys) -> str:
    """The one line a refused command wrote to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _refused(capsys, command, arguments: list[str], option: str, named: str) -> None:
    with pytest.raises(SystemExit) as exit:
        command(arguments)
    assert exit.value.code == 2
    line = _refusal(capsys)
    assert option in line and named in line, line


SWEEP = ["sweep", "--preset", "debug_cpu", "--grid", "loss.temperature=0.1", "--executor", "inline"]


@pytest.mark.parametrize("command", ["run", "sweep", "reports"])
@pytest.mark.parametrize("seeds, named", BAD_SEEDS)
def test_bad_seeds_are_one_error_line_on_every_command(tmp_path, capsys, command, seeds, named):
    runs, out = tmp_path / "runs", tmp_path / "out"
    if command == "reports":
        _refused(capsys, reports_main, ["smoke", "--output-root", str(runs), "--out", str(out), "--seeds", seeds],
                 "--seeds", named)
    else:
        arguments = ["run", "smoke", "--executor", "inline"] if command == "run" else SWEEP
        _refused(capsys, slurm_main, [*arguments, "--output-root", str(runs), "--seeds", seeds], "--seeds", named)
    assert not runs.exists() and not out.exists()  # nothing ran, nothing was recorded or written


@pytest.mark.parametrize("command", ["run", "reports"])
@pytest.mark.parametrize("datasets, named", [("cifar10,,cifar100", "empty"), ("cifar100,cifar100", "given twice"),
                                             ("", "empty")])
def test_bad_dataset_lists_are_one_error_line(tmp_path, capsys, command, datasets, named):
    runs, out = tmp_path / "runs", tmp_path / "out"
    if command == "reports":
        arguments = ["table6", "--output-root", str(runs), "--out", str(out), "--datasets", datasets]
        _refused(capsys, reports_main, arguments, "--datasets", named)
    else:
        arguments = ["run", "table6", "--executor", "inline", "--output-root", str(runs), "--datasets", datasets]
        _refused(capsys, slurm_main, arguments, "--datasets", named)
    assert not runs.exists() and not out.exists()


@pytest.mark.parametrize("arguments, option, named", [
    (["--evals", "knn,,linear"], "--evals", "empty"),
    (["--evals", "knn,knn"], "--evals", "given twice"),
    (["--evals", ""], "--evals", "empty"),
    (["--evals", "knn,knn:default"], "--evals", "knn"),  # one protocol twice: both would be stage .../knn
    (["--nodes", "0"], "--nodes", ">= 1"),
    (["--nodes", "x"], "--nodes", "not a whole number"),
    (["--gpus-per-node", "-1"], "--gpus-per-node", "negative"),
    (["--gpus-per-node", "08"], "--gpus-per-node", "leading zero"),
    (["--hours", "0"], "--hours", "> 0"),
    (["--hours", "nan"], "--hours", "> 0"),
    (["--jobs", "x"], "--jobs", "not a whole number"),
    (["--jobs", "0"], "--jobs", ">= 1"),
    (["--jobs", "02"], "--jobs", "leading zero"),
])
def test_bad_sweep_options_are_one_error_line(tmp_path, capsys, arguments, option, named):
    _refused(capsys, slurm_main, [*SWEEP, "--output-root", str(tmp_path / "runs"), *arguments], option, named)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("jobs, named", [("x", "not a whole number"), ("0", ">= 1"), ("1.5", "not a whole number"),
                                         ("-2", "negative"), ("02", "leading zero")])
def test_bad_jobs_on_run_are_one_error_line(tmp_path, capsys, jobs, named):
    arguments = ["run", "smoke", "--executor", "inline", "--output-root", str(tmp_path / "runs"), "--jobs", jobs]
    _refused(capsys, slurm_main, arguments, "--jobs", named)
    assert not (tmp_path / "runs").exists()


def test_an_empty_grid_value_is_refused(tmp_path, capsys):
    arguments = ["sweep", "--preset", "debug_cpu", "--grid", "loss.temperature=0.1,,0.2", "--dry-run",
                 "--output-root", str(tmp_path / "runs")]
    _refused(capsys, slurm_main, arguments, "loss.temperature=0.1,,0.2", "empty")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("arguments, named", [
    (["sweep", "--preset", "debug_cpu", "--grid", "run.seed=0,012"], "'run.seed': 012 is ambiguous"),
    (["sweep", "--preset", "debug_cpu", "--grid", "optim.epochs=010"], "'optim.epochs': 010 is ambiguous"),
    (["run", "smoke", "--set", "run.seed=012"], "'run.seed': 012 is ambiguous"),
    (["run", "smoke", "--eval-set", "optim.epochs=0x10"], "'optim.epochs': 0x10 is ambiguous"),
    (["run", "smoke", "--cluster", "max_hours=1:30"], "'max_hours': 1:30 is ambiguous"),
])
def test_a_seed_or_number_in_an_override_is_decimal_too(tmp_path, capsys, arguments, named):
    """Seeds and numbers given as key=value (--set, --eval-set, --grid, --cluster) follow the same rule: what
    YAML would read as octal, hex or minutes:seconds is refused, not run as another number."""
    _refused(capsys, slurm_main, [*arguments, "--executor", "inline", "--output-root", str(tmp_path / "runs")],
             named.split(":")[0], named)
    assert not (tmp_path / "runs").exists()
