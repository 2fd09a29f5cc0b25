"""The tuning's report: one row per trial with its validation kNN, the chosen point per method (the best;
ties to the lower learning rate), read back from tuning.csv; and a tiny tuning run end to end."""
from __future__ import annotations

import csv

import pytest

import evaluate.features
import pretrain.train
from plans.tables import tuning_plan
from plans.tuning import TrialSchedule, TunedMethod, tuning_trials
from reports.__main__ import main as reports_main
from reports.collect import collect, split_superseded
from reports.tuning import ScoredPoint, choose, read_chosen_points, tuning_table, write_tuning_report
from slurm.executors import ClusterConfig
from slurm.graph import launch


def _point(method: str, lr: str, temperature: str, knn: float | None) -> ScoredPoint:
    return ScoredPoint(method, {"optim.base_lr": lr, "loss.temperature": temperature}, [0], knn)


def test_the_best_validation_knn_is_chosen_and_a_tie_goes_to_the_lower_learning_rate():
    points = [_point("patchmix", "0.01", "0.1", 66.5), _point("patchmix", "0.003", "0.2", 67.0),
              _point("patchmix", "0.02", "0.2", 67.0), _point("patchmix", "0.005", "0.3", None),
              _point("sdmp", "0.02", "0.1", 60.0), _point("sdmp", "0.01", "0.2", 61.0),
              _point("sdmp", "0.003", "0.2", 61.0), _point("sdmp", "0.003", "0.3", 61.0),  # tie in both: the earlier
              _point("dino", "0.01", "0.1", None)]
    chosen = choose(points)
    assert chosen["patchmix"] is points[1] and chosen["sdmp"] is points[6]
    assert "dino" not in chosen  # no trial finished: nothing is chosen
    # The order of the trials does not decide between different learning rates.
    assert choose(list(reversed(points)))["patchmix"] is points[1]


def test_tuning_csv_has_one_row_per_trial_and_gives_back_the_chosen_points(tmp_path):
    points = [_point("patchmix", "0.01", "0.1", 66.5), _point("patchmix", "0.003", "0.2", 67.25),
              ScoredPoint("dino", {"optim.base_lr": "0.001", "dino.out_dim": "256"}, [0, 1], 40.125),
              ScoredPoint("dino", {"optim.base_lr": "0.01", "dino.out_dim": "4096"}, [], None)]
    path = tmp_path / "tuning.csv"
    tuning_table(points).to_csv(path, index=False)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["method", "optim.base_lr", "loss.temperature", "dino.out_dim", "seeds",
                             "validation_knn_top1", "chosen"]
    assert [(row["method"], row["validation_knn_top1"], row["chosen"]) for row in rows] == [
        ("patchmix", "66.5", "no"), ("patchmix", "67.25", "yes"), ("dino", "40.125", "yes"), ("dino", "", "no")]
    assert rows[2]["seeds"] == "0 1" and rows[2]["loss.temperature"] == ""
    assert read_chosen_points(path) == {"patchmix": {"optim.base_lr": "0.003", "loss.temperature": "0.2"},
                                        "dino": {"optim.base_lr": "0.001", "dino.out_dim": "256"}}
    path.write_text(path.read_text().replace(",no\n", ",yes\n", 1))  # a second chosen row, edited by hand
    with pytest.raises(ValueError, match="patchmix has more than one chosen trial"):
        read_chosen_points(path)


@pytest.mark.slow
def test_a_tiny_tuning_runs_inline_never_builds_the_test_split_and_reports_its_choice(tmp_path, monkeypatch):
    """Two points of PatchMix's space on debug_cpu's generated images (96 training and 32 validation
    images, one epoch), each pretrained and evaluated on the validation split; then tuning.csv/.md."""
    splits = []
    for module in (pretrain.train, evaluate.features):
        def recording(data, split, *arguments, original=module.build_dataset, **keywords):
            splits.append(split)
            return original(data, split, *arguments, **keywords)
        monkeypatch.setattr(module, "build_dataset", recording)
    methods = {"patchmix": TunedMethod("PatchMix", "patchmix", "debug_cpu")}
    schedule = TrialSchedule(epochs=1, training_images=96, validation_images=32)
    trials = tuning_trials("synthetic", methods=methods, trials_per_method=2, schedule=schedule)
    plan = tuning_plan(trials, "tiny tuning", {"nodes": 1, "gpus_per_node": 0, "hours": 0.5}, "ViT-debug/4")
    root = tmp_path / "runs"
    common = {"pretrain_overrides": ["run.progress=false"], "eval_overrides": ["run.progress=false"],
              "echo": lambda _: None}
    assert set(launch(plan, "inline", root, ClusterConfig(), **common).values()) == {"ran"}
    assert "test" not in splits and {"train", "validation"} <= set(splits)

    results, _ = split_superseded(collect(root))
    csv_path, text_path = write_tuning_report(plan, trials, results, tmp_path / "out", methods, schedule, "tiny", (0,))
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and [row["chosen"] for row in rows].count("yes") == 1
    assert all(0 <= float(row["validation_knn_top1"]) <= 100 and row["seeds"] == "0" for row in rows)
    best = max(rows, key=lambda row: (float(row["validation_knn_top1"]), -float(row["optim.base_lr"])))
    assert best["chosen"] == "yes"
    text = text_path.read_text()
    assert "2 of 2 trials have results" in text and "[tuning.csv](tuning.csv)" in text
    assert f"optim.base_lr={best['optim.base_lr']},loss.temperature={best['loss.temperature']}" in text
    assert "32 validation images held out of the first 128 training images" in text
    assert "| PatchMix | `debug_cpu` | `debug_cpu` | " in text  # trials start from, the chosen point set in
    assert set(launch(plan, "inline", root, ClusterConfig(), **common).values()) == {"complete"}


def test_the_tuning_report_of_a_plan_not_run_yet_lists_every_trial(tmp_path, capsys):
    reports_main(["tune", "--output-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "wrote" in capsys.readouterr().out
    text = (tmp_path / "out" / "tuning.md").read_text()
    assert "0 of 32 trials have results" in text and "8 trials per method" in text
    assert "2,000 validation images held out of the first 6,096 training images" in text
    assert text.count("no trial has a result") == 4
    with open(tmp_path / "out" / "tuning.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32 and {row["chosen"] for row in rows} == {"no"}


@pytest.mark.parametrize("arguments", [["tune", "--datasets", "fashion_mnist,fashion_mnist_gpu"],
                                       ["tune", "--datasets", "cifar10"], ["table3", "tune"]])
def test_the_tuning_report_is_one_scale_and_written_on_its_own(tmp_path, capsys, arguments):
    with pytest.raises(SystemExit) as stopped:
        reports_main([*arguments, "--output-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert "one tuning report per scale" in capsys.readouterr().err or arguments[0] == "table3"
