"""Reports from fixed result files: a golden markdown, seed aggregation and its refusals."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reports.__main__ import main as reports_main
from reports.__main__ import write_reports
from reports.collect import collect
from reports.tables import InconsistentResults

GOLDEN = Path(__file__).parent / "golden_table6_cifar100.md"


def write_result(root: Path, experiment: str, protocol: str, metrics: dict, seed: int, commit: str = "abc1234def",
                 experiment_hash: str = "e1", incomplete: bool = False, completed: float | None = None) -> None:
    run_dir = root / (experiment.replace("/", "_") + (f"-{experiment_hash}" if completed else ""))
    run_dir.mkdir(parents=True)
    if incomplete:
        (run_dir / "config.yaml").write_text("{}")
        return
    record = {"stage": "evaluate", "protocol": protocol, "preset": "x", "experiment": experiment, "metrics": metrics,
              "seed": seed, "config_hash": f"c{seed}", "experiment_hash": experiment_hash,
              "pretrain_experiment_hash": "p1", "provenance": {"git_commit": commit, "git_dirty": False}}
    (run_dir / "result.json").write_text(json.dumps(record))
    if completed:
        os.utime(run_dir / "result.json", (completed, completed))


def fixed_results(root: Path) -> None:
    """m = 1 and m = 2 on CIFAR-100 with two seeds each; m = 3 with one; m = 4 not run."""
    values = {1: (60.0, 62.0, 65.0, 67.0), 2: (70.0, 71.0, 76.0, 78.0), 3: (72.5, None, 77.5, None)}
    for m, (knn0, knn1, linear0, linear1) in values.items():
        for seed, knn, linear in ((0, knn0, linear0), (1, knn1, linear1)):
            if knn is None:
                continue
            base = f"table6/cifar100/m{m}/seed{seed}"
            write_result(root, f"{base}/knn", "knn", {"top1_k20": knn, "top5_k20": 90.0}, seed)
            write_result(root, f"{base}/linear", "linear", {"top1_best": linear, "top1_last": linear - 1}, seed)
    write_result(root, "table6/cifar100/m4/seed0/knn", "knn", {}, 0, incomplete=True)


def test_golden_markdown(tmp_path):
    fixed_results(tmp_path / "runs")
    (report,) = write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1), datasets=("cifar100",))
    text = report.read_text()
    assert text == GOLDEN.read_text()  # checked by hand: e.g. m=1 linear (65, 67) -> 66.0 ± 1.4, Δ +0.0
    assert (tmp_path / "out" / "table6_mix_number.png").stat().st_size > 10_000


def test_incomplete_runs_are_never_reported(tmp_path):
    fixed_results(tmp_path / "runs")
    results = collect(tmp_path / "runs")
    assert len(results) == 10 and not results.experiment.str.contains("m4").any()


def test_mixed_config_hashes_are_refused_with_a_listing(tmp_path):
    write_result(tmp_path / "runs", "table6/cifar100/m2/seed0/knn", "knn", {"top1_k20": 70.0}, 0, experiment_hash="e1")
    write_result(tmp_path / "runs", "table6/cifar100/m2/seed1/knn", "knn", {"top1_k20": 71.0}, 1, experiment_hash="e2")
    with pytest.raises(InconsistentResults, match=r"(?s)refusing to average PatchMix m=2 cifar100 knn.*seed 0: "
                                                  r"experiment e1\+p1.*seed 1: experiment e2\+p1"):
        write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1), datasets=("cifar100",))


def test_mixed_code_versions_are_refused(tmp_path):
    write_result(tmp_path / "runs", "table6/cifar100/m2/seed0/knn", "knn", {"top1_k20": 70.0}, 0, commit="aaaa")
    write_result(tmp_path / "runs", "table6/cifar100/m2/seed1/knn", "knn", {"top1_k20": 71.0}, 1, commit="bbbb")
    with pytest.raises(InconsistentResults, match="commit aaaa"):
        write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1), datasets=("cifar100",))


def test_older_runs_of_a_stage_are_superseded_not_averaged(tmp_path):
    """A stage rerun under a new config (new run directory) replaces its older result in the report."""
    runs = tmp_path / "runs"
    write_result(runs, "table6/cifar100/m2/seed0/knn", "knn", {"top1_k20": 50.0}, 0, commit="old0000000",
                 experiment_hash="e0", completed=1_000_000)
    for seed, value in ((0, 70.0), (1, 72.0)):
        write_result(runs, f"table6/cifar100/m2/seed{seed}/knn", "knn", {"top1_k20": value}, seed, commit="new0000000",
                     experiment_hash="e1", completed=2_000_000)
    (report,) = write_reports(["table6"], runs, tmp_path / "out", seeds=(0, 1), datasets=("cifar100",))
    text = report.read_text()
    assert "71.0 ± 1.4" in text and "50.0" not in text.split("Left out")[0]
    assert "Left out: 1 older result(s)" in text and "old0000000" in text


def test_rows_show_exactly_the_seeds_they_average_and_name_what_they_leave_out(tmp_path):
    """A non-finite or missing metric is left out of the mean with its path named; an unreadable
    result.json is listed; an evaluation of an unfinished pretraining run is marked."""
    root = tmp_path / "runs"
    base = "table6/cifar100/m1"
    write_result(root, f"{base}/seed0/knn", "knn", {"top1_k20": 60.0}, 0)
    write_result(root, f"{base}/seed1/knn", "knn", {"top1_k20": float("nan")}, 1)
    write_result(root, f"{base}/seed2/knn", "knn", {"top5_k20": 90.0}, 2)
    write_result(root, f"{base}/seed0/linear", "linear", {"top1_best": 65.0}, 0)
    damaged = root / "table6_cifar100_m1_seed1_linear"
    damaged.mkdir()
    (damaged / "result.json").write_text('{"stage": "evaluate", "metr')
    unfinished = root / "table6_cifar100_m1_seed0_linear" / "result.json"
    record = json.loads(unfinished.read_text())
    unfinished.write_text(json.dumps({**record, "pretrain_complete": False, "checkpoint_step": 96}))

    (report,) = write_reports(["table6"], root, tmp_path / "out", seeds=(0, 1, 2), datasets=("cifar100",))
    text = report.read_text()
    knn_row = next(line for line in text.splitlines() if line.startswith("| PatchMix m=1") and "knn" in line)
    cells = [cell.strip() for cell in knn_row.split("|")]
    assert cells[7] == "60.0 *" and cells[9] == "0"  # one value averaged, one seed listed
    assert "seed 1 left out: top1_k20 is nan in" in text and "seed 2 left out: top1_k20 is missing in" in text
    assert f"- {damaged / 'result.json'}: JSONDecodeError" in text
    assert "seed 0 evaluated an unfinished pretraining run (checkpoint step 96)" in text


def test_table4_reports_the_papers_protocol_row_and_a_labelled_vitdet_row(tmp_path):
    """Our comparable row runs the ViT-FPN protocol of the paper's Table 4 rows; ViTDet is its own row,
    and the reference table names each row's protocol."""
    base = "table4/vit_b16/seed0"
    for config, box, mask in (("vit_fpn_100ep", 50.1, 44.0), ("vitdet_100ep", 51.4, 45.2)):
        write_result(tmp_path / "runs", f"{base}/transfer-{config}", "", {"ap_box": box, "ap_mask": mask}, 0)
    (report,) = write_reports(["table4"], tmp_path / "runs", tmp_path / "out", seeds=(0,))
    text = report.read_text()
    assert "| PatchMix | ViT-B/16 | 300 | coco | ap_box | 51.9 | 50.1 | -1.8 |" in text
    assert "transfer vit_fpn_100ep" in text
    assert "| PatchMix (ViTDet recipe) | ViT-B/16 | 300 | coco | ap_box | — | 51.4 | — |" in text
    assert "| Dataset | Backbone | Paper table | Method | Epochs | ap_box | ap_mask | Source | Note |" in text
    assert "| coco | ViT-B/16 | table4 | MAE | 1600 | 50.3 | 44.9 | paper's number only | Mask R-CNN with FPN |" in text
    assert "| coco | ViT-B/16 | table4 | PatchMix | 300 | 51.9 | 46.1 | paper's number; also a row run here (above) |" in text


@pytest.mark.parametrize("damage", ['{"official": {"seeds": [0, 1', "[1, 2]", '{"official": {"seeds": "01"}}',
                                    '{"official": [0, 1]}', '{"official": {"seeds": [0], "datasets": [7]}}'])
def test_a_damaged_launch_record_is_named_never_guessed(tmp_path, capsys, damage):
    """Without --seeds/--datasets the report reads what was launched; a damaged record is refused
    with its path instead of falling back to the plan's defaults."""
    fixed_results(tmp_path / "runs")
    record = tmp_path / "runs" / ".jobs" / "table6" / "launch.json"
    record.parent.mkdir(parents=True)
    record.write_text(damage)
    with pytest.raises(SystemExit) as exit:
        reports_main(["table6", "--output-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(record) in lines[0], lines
    assert not (tmp_path / "out" / "table6.md").exists()

    # Seeds and datasets named: nothing to remember, the record is not needed.
    reports_main(["table6", "--output-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                  "--seeds", "0,1", "--datasets", "cifar100"])
    assert (tmp_path / "out" / "table6.md").read_text() == GOLDEN.read_text()


def write_pretraining(root: Path, experiment: str, epochs: int, experiment_hash: str = "p1") -> None:
    """A pretraining run's result.json as pretrain/train.py writes it (the fields reports read)."""
    run_dir = root / experiment.replace("/", "_")
    run_dir.mkdir(parents=True)
    record = {"stage": "pretrain", "experiment": experiment, "seed": 0, "epochs": epochs,
              "experiment_hash": experiment_hash,
              "provenance": {"git_commit": "abc1234def", "git_dirty": False}}
    (run_dir / "result.json").write_text(json.dumps(record))


@pytest.mark.parametrize("epochs_run", [100, 800])
def test_runs_that_pretrained_other_epochs_than_planned_are_not_compared_with_the_paper(tmp_path, epochs_run):
    """`make table6 ARGS="optim.epochs=100"` trains 100 epochs where the paper (and the plan's title) says
    800: the report says so, per row and under its title, and does not subtract the paper's 800-epoch
    number from it. Trained as planned, the paper's number is compared as before."""
    fixed_results(tmp_path / "runs")
    write_pretraining(tmp_path / "runs", "table6/cifar100/m1/seed0/pretrain", epochs_run)
    (report,) = write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1),
                              datasets=("cifar100",))
    text = report.read_text()
    m2 = next(line for line in text.splitlines() if line.startswith("| PatchMix m=2 |") and "| knn" in line)
    if epochs_run == 800:
        assert text == GOLDEN.read_text()
        return
    assert "| ViT-S/2 | 100 | cifar100 | knn (top-1, k=20) | — | 70.5 ± 0.7 * | — |" in m2
    assert ("- PatchMix m=2 cifar100 knn: its runs pretrained 100 epochs, not the 800 of the plan "
            "(an override at launch): the paper's 800-epoch number (71.1) is not compared") in text
    assert text.splitlines()[2].startswith("The runs of 6 rows pretrained other epochs than the plan's "
                                           "(the Epochs column, notes below).")
