"""Sweeps: a grid of overrides x seeds, each point with its evaluations, reported grouped by the keys."""
from __future__ import annotations

import json

import pytest

from plans.sweeps import Sweep, check_grid, parse_grid, save_sweep, sweep_plan
from reports.__main__ import main as reports_main
from slurm.__main__ import main as slurm_main


def test_grid_parsing_and_the_plan_of_a_sweep():
    grid = parse_grid(["loss.temperature=0.1,0.2", "mix.num_mixed=2,3"])
    assert grid == (("loss.temperature", ("0.1", "0.2")), ("mix.num_mixed", ("2", "3")))
    plan = sweep_plan(Sweep("t", "debug_cpu", grid, (0, 1), ("knn", "linear:fast")))
    assert len(plan.stages) == 4 * 2 * 3
    stage = plan.stage("sweep/t/loss.temperature=0.2,mix.num_mixed=3/seed1/pretrain")
    assert stage.overrides == ("loss.temperature=0.2", "mix.num_mixed=3", "run.seed=1")
    assert plan.stage("sweep/t/loss.temperature=0.2,mix.num_mixed=3/seed1/linear").preset == "fast"
    for bad in (["loss.temperature"], ["loss.temperature="], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_grid(bad)
    with pytest.raises(ValueError, match="unknown preset|no preset|preset"):
        sweep_plan(Sweep("t", "no_such_preset", grid))


def test_relaunching_a_sweep_adds_values_and_seeds_but_refuses_other_keys(tmp_path):
    first = Sweep("t", "debug_cpu", parse_grid(["loss.temperature=0.1,0.2"]), (0,), ("knn",))
    save_sweep(tmp_path, first)
    path = save_sweep(tmp_path, Sweep("t", "debug_cpu", parse_grid(["loss.temperature=0.3"]), (1,), ("linear",)))
    saved = json.loads(path.read_text())
    assert saved["grid"] == [["loss.temperature", ["0.1", "0.2", "0.3"]]] and saved["seeds"] == [0, 1]
    assert saved["evals"] == ["knn", "linear"]
    with pytest.raises(ValueError, match="choose another --name"):
        save_sweep(tmp_path, Sweep("t", "debug_cpu", parse_grid(["mix.num_mixed=2"])))


@pytest.mark.slow
def test_a_two_by_two_sweep_with_two_seeds_runs_inline_and_reports_grouped(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "out"
    slurm_main(["sweep", "--preset", "debug_cpu", "--grid", "loss.temperature=0.1,0.2", "mix.num_mixed=2,3",
                "--seeds", "0,1", "--evals", "knn", "--executor", "inline", "--output-root", str(root),
                "--set", "optim.epochs=1", "run.progress=false", "--eval-set", "run.progress=false"])
    printed = capsys.readouterr().out
    assert "[sweep-debug_cpu-temperature+num_mixed] 16 ran" in printed
    assert "python -m reports sweep debug_cpu-temperature+num_mixed" in printed
    results = sorted(root.glob("**/result.json"))
    assert len(results) == 16  # every point and seed coexists: none superseded

    reports_main(["sweep", "debug_cpu-temperature+num_mixed", "--output-root", str(root), "--out", str(out)])
    text = (out / "sweep-debug_cpu-temperature+num_mixed.md").read_text()
    assert "4 of 4 point evaluations have results" in text
    table = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert [line.split(" | ")[:2] for line in table] == [["| 0.1", "2"], ["| 0.1", "3"], ["| 0.2", "2"], ["| 0.2", "3"]]
    assert all("(n=2)" in line and "±" in line for line in table)
    for key in ("loss.temperature", "mix.num_mixed"):
        assert (out / f"sweep-debug_cpu-temperature+num_mixed-{key}.png").stat().st_size > 5_000
        assert f"![{key}](sweep-debug_cpu-temperature+num_mixed-{key}.png)" in text

    # Running it again runs nothing.
    slurm_main(["sweep", "--preset", "debug_cpu", "--grid", "loss.temperature=0.1,0.2", "mix.num_mixed=2,3",
                "--seeds", "0,1", "--evals", "knn", "--executor", "inline", "--output-root", str(root),
                "--set", "optim.epochs=1", "run.progress=false", "--eval-set", "run.progress=false"])
    assert "16 complete" in capsys.readouterr().out


def _refusal(capsys) -> str:
    """The one line a refused command wrote to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("arguments, named", [
    (["--grid", "nosuch.key=1,2"], "nosuch"),
    (["--grid", "mix.num_mixed=2,abc"], "mix.num_mixed"),
    (["--grid", "loss.temperature=0.1", "--set", "optim.epochs=abc"], "optim.epochs"),
])
def test_a_sweep_refused_at_validation_is_not_saved(tmp_path, capsys, arguments, named):
    """Nothing ran, so no definition is kept: the name stays free and no report is written for it."""
    with pytest.raises(SystemExit) as exit:
        slurm_main(["sweep", "--preset", "debug_cpu", *arguments, "--name", "s", "--executor", "inline",
                    "--output-root", str(tmp_path)])
    assert exit.value.code == 2
    assert named in _refusal(capsys)
    assert not list(tmp_path.glob(".sweeps/*.json"))


def test_an_unknown_grid_key_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        slurm_main(["sweep", "--preset", "debug_cpu", "--grid", "nosuch.key=1,2", "--dry-run",
                    "--output-root", str(tmp_path)])
    line = _refusal(capsys)
    assert "'nosuch'" in line and all(section in line for section in ("model", "mix", "loss", "optim"))


def test_grid_values_equal_as_numbers_are_one_point(tmp_path, capsys):
    grid = check_grid("debug_cpu", parse_grid(["loss.temperature=0.3,0.30,3e-1", "mix.num_mixed=2,+2"]))
    assert grid == (("loss.temperature", ("0.3",)), ("mix.num_mixed", ("2",)))
    slurm_main(["sweep", "--preset", "debug_cpu", "--grid", "loss.temperature=0.3,0.30", "--dry-run",
                "--executor", "local", "--output-root", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "[sweep-debug_cpu-temperature] 2 would submit" in printed  # one point: pretraining + kNN
    assert "sweep/debug_cpu-temperature/loss.temperature=0.3/seed0/pretrain" in printed


@pytest.mark.parametrize("content, named", [
    ('{"name": "s", "preset": "debug_cpu", "seeds": [0], "evals": ["knn"]}', "grid"),
    ('{"name": "s", "preset": "debug_cp', "not readable JSON"),
    ('{"name": "s", "preset": "debug_cpu", "grid": [["loss.temperature", 0.1]], "seeds": [0], "evals": ["knn"]}',
     "grid"),
    ('{"name": "s", "preset": "debug_cpu", "grid": [["loss.temperature", ["0.1"]]], "seeds": "0", "evals": ["knn"]}',
     "seeds"),
    ('[1, 2]', "an object"),
])
def test_a_damaged_sweep_file_is_named(tmp_path, capsys, content, named):
    path = tmp_path / ".sweeps" / "s.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(SystemExit) as exit:
        reports_main(["sweep", "s", "--output-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    line = _refusal(capsys)
    assert str(path) in line and named in line
    assert not (tmp_path / "out").exists()


def test_a_sweep_name_is_a_plain_name_and_the_known_ones_are_listed(tmp_path, capsys):
    save_sweep(tmp_path, Sweep("known", "debug_cpu", parse_grid(["loss.temperature=0.1"])))
    for name in ("../x", "missing"):
        with pytest.raises(SystemExit) as exit:
            reports_main(["sweep", name, "--output-root", str(tmp_path), "--out", str(tmp_path / "out")])
        assert exit.value.code == 2
        line = _refusal(capsys)
        assert repr(name) in line and "known: known" in line


def _files(root) -> set:
    return {path for path in root.rglob("*")} if root.exists() else set()


@pytest.mark.parametrize("preset, grid", [("demo_fashion_mnist_m2", "loss.temperature=0.1"),  # another preset
                                          ("debug_cpu", "mix.num_mixed=2"),                   # other keys
                                          ("debug_cpu", "damaged")])                          # unreadable file
def test_a_dry_run_refuses_what_the_sweep_launch_refuses_with_its_message(tmp_path, capsys, preset, grid):
    """A sweep named like an existing one of another preset or other keys (or whose kept definition is
    damaged): the dry run ends as the launch does, with the same error line and exit 2, and neither writes."""
    save_sweep(tmp_path, Sweep("same", "debug_cpu", parse_grid(["loss.temperature=0.1,0.2"])))
    if grid == "damaged":
        (tmp_path / ".sweeps" / "same.json").write_text('{"name": "same"')
        grid = "loss.temperature=0.1"
    before = _files(tmp_path)
    arguments = ["sweep", "--preset", preset, "--grid", grid, "--name", "same", "--executor", "inline",
                 "--output-root", str(tmp_path), "--set", "optim.epochs=1"]
    refusals = []
    for dry_run in (["--dry-run"], []):
        with pytest.raises(SystemExit) as exit:
            slurm_main([*arguments, *dry_run])
        assert exit.value.code == 2
        refusals.append(_refusal(capsys))
    assert refusals[0] == refusals[1] and "same" in refusals[0], refusals
    assert _files(tmp_path) == before  # no lock folder, no run, the definition as it was
