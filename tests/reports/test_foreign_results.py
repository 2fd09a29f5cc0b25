"""A row holds results of one dataset, one pretraining method and one pretraining preset: a result
that carries a stage's key (a hand-set `run.experiment`) but differs from the stage in any of them is
named, with what differs, and left out -- for every kind of record a report reads."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from plans.sweeps import Sweep, save_sweep
from reports.__main__ import main as reports_main
from reports.__main__ import write_reports

COMMIT = "abc1234def"


@dataclass(frozen=True)
class Case:
    """A row of a plan and the records that fill it: `{prefix}/seed{seed}/pretrain` and
    `{prefix}/seed{seed}/{suffix}` (the evaluation or transfer stage)."""

    plan: str
    datasets: tuple[str, ...]
    prefix: str
    suffix: str
    row: str  # how the row's line in the main table starts
    preset: str  # its pretraining preset
    dataset: str  # what its pretraining config reads
    epochs: int
    metrics: Callable[[float], dict]
    kept: float  # the value of the result that belongs
    shown: str  # as the row shows it


CASES = {
    "knn": Case("table6", ("cifar100",), "table6/cifar100/m2", "knn",
                "| PatchMix m=2 | ViT-S/2 | 800 | cifar100 | knn", "cifar100_vit_s2_800ep_m2_official", "cifar100",
                800, lambda v: {"top1_k20": v}, 70.0, "70.0"),
    "linear": Case("table6", ("cifar100",), "table6/cifar100/m2", "linear",
                   "| PatchMix m=2 | ViT-S/2 | 800 | cifar100 | linear", "cifar100_vit_s2_800ep_m2_official",
                   "cifar100", 800, lambda v: {"top1_best": v}, 70.0, "70.0"),
    "finetune": Case("table3", ("cifar100",), "table3/cifar100/vit_t2/800ep", "finetune",
                     "| PatchMix | ViT-T/2 | 800 | cifar100 | finetune", "cifar100_vit_t2_800ep_official", "cifar100",
                     800, lambda v: {"top1_best": v}, 70.0, "70.0"),
    "similarity": Case("fig4", ("fashion_mnist",), "fig4/fashion_mnist/patchmix", "similarity",
                       "| PatchMix | ViT-debug/4 | 20 | fashion_mnist | similarity", "fashion_mnist_cpu_m2_official",
                       "fashion_mnist", 20, lambda v: {"related_class_similarity": v}, 0.5, "0.500"),
    "transfer": Case("table4", (), "table4/vit_b16", "transfer-vit_fpn_100ep",
                     "| PatchMix | ViT-B/16 | 300 | coco | ap_box", "imagenet_vit_b16_300ep_official", "imagenet", 300,
                     lambda v: {"ap_box": v, "ap_mask": v - 5}, 50.0, "50.0"),
}
FOREIGN = {"dataset": "cifar10", "method": "dino", "preset": "another_preset_official"}


def write(root: Path, name: str, record: dict, completed: float | None = None) -> Path:
    path = root / name / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**record, "provenance": {"git_commit": COMMIT, "git_dirty": False}}))
    if completed:
        os.utime(path, (completed, completed))
    return path


def pretraining(case: Case, seed: int, digest: str, **changed) -> dict:
    """The fields pretraining writes (pretrain/train.finish); `changed`: dataset, method or preset."""
    return {"stage": "pretrain", "preset": changed.get("preset", case.preset),
            "experiment": f"{case.prefix}/seed{seed}/pretrain", "seed": seed,
            "dataset": changed.get("dataset", case.dataset), "method": changed.get("method", "patchmix"),
            "epochs": case.epochs, "experiment_hash": digest, "config_hash": f"{digest}-{seed}", "metrics": {}}


def downstream(case: Case, seed: int, digest: str, value: float, **changed) -> dict:
    """The fields an evaluation (evaluate/session.result) or a transfer run (transfer/train.write_result)
    writes: the encoder's origin, and the evaluation's dataset (transfer records have none)."""
    record = {"experiment": f"{case.prefix}/seed{seed}/{case.suffix}", "seed": seed, "metrics": case.metrics(value),
              "pretrain_preset": changed.get("preset", case.preset), "pretrain_experiment_hash": digest,
              "experiment_hash": "e1", "config_hash": f"e1-{seed}"}
    if case.suffix.startswith("transfer"):
        return {**record, "stage": "transfer", "config": case.suffix.removeprefix("transfer-")}
    return {**record, "stage": "evaluate", "protocol": case.suffix, "preset": "default",
            "dataset": changed.get("dataset", case.dataset)}


def row_line(text: str, case: Case) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(case.row)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def report(root: Path, out: Path, case: Case, seeds: tuple[int, ...] = (0, 1)) -> str:
    (path,) = write_reports([case.plan], root, out, seeds=seeds, datasets=case.datasets)
    return path.read_text()


def named_lines(text: str, path: Path) -> list[str]:
    return [line for line in text.splitlines() if str(path) in line]


@pytest.mark.parametrize("sibling", sorted(FOREIGN))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_result_of_another_dataset_method_or_preset_is_named_and_left_out(tmp_path, capsys, kind, sibling):
    """Seed 0 belongs to the row; seed 1 carries the row's stage keys but another dataset (its own
    field, or its pretraining's for a transfer record, which has none), pretraining method (its
    pretraining's record) or pretraining preset."""
    case, root = CASES[kind], tmp_path / "runs"
    write(root, "seed0-pretrain", pretraining(case, 0, "p1"))
    write(root, "seed0-eval", downstream(case, 0, "p1", case.kept))
    write(root, "seed1-pretrain", pretraining(case, 1, "p-foreign", **{sibling: FOREIGN[sibling]}))
    foreign = write(root, "seed1-eval", downstream(case, 1, "p-foreign", case.kept / 7,
                                                   **({sibling: FOREIGN[sibling]} if sibling != "method" else {})))
    text = report(root, tmp_path / "out", case)
    cells = row_line(text, case)
    assert cells[6] == case.shown and cells[8] == "0", cells  # Ours: seed 0's value alone; Seeds: 0
    (line,) = named_lines(text.split("Left out", 1)[-1], foreign)
    assert sibling in line and FOREIGN[sibling] in line, line
    warnings = [line for line in capsys.readouterr().err.splitlines() if str(foreign) in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and FOREIGN[sibling] in warnings[0]


@pytest.mark.parametrize("sibling", sorted(FOREIGN))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_rows_only_result_of_another_dataset_method_or_preset_is_not_its_value(tmp_path, capsys, kind, sibling):
    """The issue's case: nothing to disagree with (one seed, so no other config hash), the foreign
    result was the row's value with no word; now the row is not run and the result is named."""
    case, root = CASES[kind], tmp_path / "runs"
    write(root, "hand-set-pretrain", pretraining(case, 0, "p1", **{sibling: FOREIGN[sibling]}))
    foreign = write(root, "hand-set-eval", downstream(case, 0, "p1", case.kept,
                                                     **({sibling: FOREIGN[sibling]} if sibling != "method" else {})))
    text = report(root, tmp_path / "out", case, seeds=(0,))
    assert row_line(text, case)[6] == "not run"
    (line,) = named_lines(text.split("Left out", 1)[-1], foreign)
    assert sibling in line and FOREIGN[sibling] in line, line
    assert any(str(foreign) in line for line in capsys.readouterr().err.splitlines())


@pytest.mark.parametrize("sibling", sorted(FOREIGN))
def test_a_pretraining_record_of_another_dataset_method_or_preset_is_named_and_left_out(tmp_path, capsys, sibling):
    """Pretraining records are read too (the epochs of the rows, the demo's loss curves): one that
    carries a pretraining stage's key with another dataset, method or preset is named."""
    case, root = CASES["knn"], tmp_path / "runs"
    write(root, "seed0-pretrain", pretraining(case, 0, "p1"))
    write(root, "seed0-eval", downstream(case, 0, "p1", case.kept))
    foreign = write(root, "seed1-pretrain", pretraining(case, 1, "p-foreign", **{sibling: FOREIGN[sibling]}))
    text = report(root, tmp_path / "out", case)
    assert row_line(text, case)[6] == case.shown
    (line,) = named_lines(text.split("Left out", 1)[-1], foreign)
    assert sibling in line and FOREIGN[sibling] in line, line
    assert any(str(foreign) in line for line in capsys.readouterr().err.splitlines())


def test_the_warning_names_the_file_and_what_differs(tmp_path, capsys):
    """The issue's case: a run of Fashion-MNIST given a CIFAR-100 row's key by hand (same config hash
    as far as the row can tell: it is the row's only result) is no longer its value."""
    case, root = CASES["knn"], tmp_path / "runs"
    write(root, "hand-set-pretrain", pretraining(case, 0, "p1", dataset="fashion_mnist"))
    foreign = write(root, "hand-set-knn", downstream(case, 0, "p1", 55.0, dataset="fashion_mnist"))
    text = report(root, tmp_path / "out", case, seeds=(0,))
    assert row_line(text, case)[6] == "not run"
    warnings = capsys.readouterr().err.splitlines()
    assert (f"warning: table6: left out {foreign}: stage table6/cifar100/m2/seed0/knn: dataset fashion_mnist, "
            "not cifar100 (averaged nowhere)") in warnings, warnings


def test_an_older_result_that_belongs_is_not_superseded_by_a_newer_foreign_one(tmp_path):
    """The foreign result is left out before the newest result of each stage is chosen: the older
    result of the row's own dataset stays the row's value, and is not listed as superseded."""
    case, root = CASES["knn"], tmp_path / "runs"
    write(root, "own-pretrain", pretraining(case, 0, "p1"), completed=1_000_000)
    own = write(root, "own-knn", downstream(case, 0, "p1", 70.0), completed=1_000_000)
    write(root, "foreign-pretrain", pretraining(case, 0, "p2", dataset="cifar10"), completed=2_000_000)
    foreign = write(root, "foreign-knn", downstream(case, 0, "p2", 10.0, dataset="cifar10"), completed=2_000_000)
    text = report(root, tmp_path / "out", case, seeds=(0,))
    assert row_line(text, case)[6] == "70.0"
    assert named_lines(text, foreign) and not named_lines(text, own)
    assert "superseded" not in text


def test_results_without_the_fields_are_kept(tmp_path, capsys):
    """Records written before a field existed (or an evaluation whose pretraining result is not
    among the results, which gives no method) are compared on the fields they have."""
    case, root = CASES["knn"], tmp_path / "runs"
    record = downstream(case, 0, "p-elsewhere", 70.0)
    write(root, "old-knn", {key: value for key, value in record.items() if key not in ("dataset", "pretrain_preset")})
    text = report(root, tmp_path / "out", case, seeds=(0,))
    assert row_line(text, case)[6] == "70.0" and "Left out" not in text
    assert "warning" not in capsys.readouterr().err


def test_a_sweep_report_leaves_out_a_result_of_another_pretraining_method(tmp_path, capsys):
    """A sweep's rows are compared with the sweep's preset plus the point's overrides."""
    root, out = tmp_path / "runs", tmp_path / "out"
    save_sweep(root, Sweep("s", "debug_cpu", (("loss.temperature", ("0.1",)),), seeds=(0, 1)))
    case = Case("sweep", (), "sweep/s/loss.temperature=0.1", "knn", "| 0.1 |", "debug_cpu", "synthetic", 1,
                lambda v: {"top1_k20": v}, 70.0, "70.0")
    write(root, "seed0-pretrain", pretraining(case, 0, "p1"))
    write(root, "seed0-knn", downstream(case, 0, "p1", 70.0))
    write(root, "seed1-pretrain", pretraining(case, 1, "p-foreign", method="dino"))
    foreign = write(root, "seed1-knn", downstream(case, 1, "p-foreign", 10.0))
    reports_main(["sweep", "s", "--output-root", str(root), "--out", str(out)])
    text = (out / "sweep-s.md").read_text()
    assert "| 0.1 | 70.0 (n=1) |" in text
    assert named_lines(text, foreign) and "dino" in named_lines(text, foreign)[0]
    assert any(str(foreign) in line and line.startswith("warning: ") for line in capsys.readouterr().err.splitlines())
