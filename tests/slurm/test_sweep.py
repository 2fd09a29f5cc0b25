"""Sweeps: a grid of overrides x seeds, each point with its evaluations, reported grouped by the keys."""
from __future__ import annotations

import json

import pytest

from plans.sweeps import Sweep, parse_grid, save_sweep, sweep_plan
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
