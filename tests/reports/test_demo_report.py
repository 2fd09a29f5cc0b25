"""Each column of a report shows what its run did (epochs, flavour), and its header states only
what holds for every row: the demo's report from its runs' records, and a tiny real inline run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from plans.tables import RANDOM_INIT, Plan, Row, Stage, build_plan
from reports.__main__ import write_reports
from reports.collect import collect, load_reference, split_superseded
from reports.tables import RowResult, plan_report, pretraining_gain_table
from slurm.executors import ClusterConfig
from slurm.graph import launch

README = Path(__file__).resolve().parents[2] / "README.md"
OWN_PRESETS = "Presets: this suite's own (Flavour `other`: neither the paper's text nor the published code)."


def write_record(root: Path, name: str, record: dict) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "result.json").write_text(json.dumps({**record, "provenance": {"git_commit": "abc1234def"}}))


def demo_results(root: Path) -> None:
    """The fields the demo's stages write into result.json (pretrain/train.finish, evaluate/session.result):
    three 8-epoch pretraining runs, kNN and linear probe of each, and kNN of the random initialisation."""
    for m in (1, 2, 3):
        prefix = f"demo/m{m}/seed0"
        write_record(root, f"demo-m{m}", {"stage": "pretrain", "preset": f"demo_fashion_mnist_m{m}", "seed": 0,
                                          "experiment": f"{prefix}/pretrain", "epochs": 8, "epochs_completed": 8.0,
                                          "experiment_hash": f"pretrain{m}", "metrics": {}})
        origin = {"pretrain_preset": f"demo_fashion_mnist_m{m}", "seed": 0, "pretrain_experiment_hash": f"pretrain{m}",
                  "pretrain_complete": True, "encoder": "momentum_encoder", "checkpoint_step": 384}
        for protocol, metrics in (("knn", {"top1_k20": 60.0 + m}), ("linear", {"top1_best": 62.0 + m})):
            write_record(root, f"demo-m{m}/eval/{protocol}", {"stage": "evaluate", "protocol": protocol, **origin,
                                                              "experiment": f"{prefix}/{protocol}", "metrics": metrics,
                                                              "experiment_hash": f"{protocol}{m}"})
    write_record(root, "demo-m2/eval/knn-random", {
        "stage": "evaluate", "protocol": "knn", "pretrain_preset": "demo_fashion_mnist_m2", "seed": 0,
        "pretrain_experiment_hash": "pretrain2", "encoder": "random", "experiment": "demo/random-init/seed0/knn",
        "metrics": {"top1_k20": 56.1}, "experiment_hash": "knn-random"})


def table_rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(method, protocol) -> {column: cell} of the report's main table."""
    lines = [line for line in text.split("\n\n")[2].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    return {(row["Method"], row["Protocol"].split(" ")[0]): row for row in rows}


def test_the_demo_report_shows_each_runs_epochs_and_a_header_true_of_every_row(tmp_path):
    demo_results(tmp_path / "runs")
    (report,) = write_reports(["demo"], tmp_path / "runs", tmp_path / "out")
    text = report.read_text()
    rows = table_rows(text)
    assert len(rows) == 7
    assert {row["Flavour"] for row in rows.values()} == {"other"}
    assert text.splitlines()[2].startswith(f"{OWN_PRESETS} 7 of 7 rows have results.")
    assert "`official` flavour" not in text
    for method in ("MoCo v3 (m=1)", "PatchMix m=2", "PatchMix m=3"):
        assert rows[method, "knn"]["Epochs"] == rows[method, "linear"]["Epochs"] == "8"
    assert rows["random init (no pretraining)", "knn"]["Epochs"] == "0"  # its encoder was never trained


def test_the_report_shows_what_pretraining_added_over_the_random_initialisation(tmp_path):
    """Each pretrained kNN row minus the random initialisation's, paired over seeds: the demo's one seed
    (the difference alone), and two seeds (the difference with its interval)."""
    demo_results(tmp_path / "runs")
    (report,) = write_reports(["demo"], tmp_path / "runs", tmp_path / "out")
    section = report.read_text().split("## What pretraining added", 1)[1]
    assert "| MoCo v3 (m=1) | fashion_mnist | ViT-debug/4 | knn | 61.0 | 56.1 | +4.9 (n=1) |" in section
    assert "| PatchMix m=3 | fashion_mnist | ViT-debug/4 | knn | 63.0 | 56.1 | +6.9 (n=1) |" in section
    assert "linear" not in section  # the random initialisation has a kNN row only
    text = report.read_text()  # one seed: no interval, so no method is judged not to have learned
    assert "not judged (under two seeds)" in section
    assert "not comparable (" not in text and "at this scale: " not in text

    trained, initial = Row("table3", "MoCo v3 (m=1)", "ViT-debug/4", 16, "fashion_mnist", "knn"), \
        Row("table3", RANDOM_INIT, "ViT-debug/4", 0, "fashion_mnist", "knn")
    results = [RowResult(trained, None, 66.5, 2.12, [0, 1], "p", "h", "c", values={0: 65.0, 1: 68.0}),
               RowResult(initial, None, 56.0, 1.41, [0, 1], "p", "h", "c", values={0: 55.0, 1: 57.0})]
    # differences 10 and 11: mean 10.5, 95 % interval 10.5 ± 12.706 x 0.707 / sqrt(2): above 0, learned
    assert pretraining_gain_table(results).splitlines()[2] == (
        "| MoCo v3 (m=1) | fashion_mnist | ViT-debug/4 | knn | 66.5 ± 2.1 | 56.0 ± 1.4 | +10.5 [4.1, 16.9] (n=2) | yes |")


def readme_demo_excerpt() -> list[str]:
    """The lines of README's excerpt of the demo report (the text block after the quick start's demo)."""
    text = README.read_text().split("## Quick start", 1)[1]
    return [line for line in text.split("```text\n", 1)[1].split("```", 1)[0].splitlines() if line]


def test_the_readme_shows_what_the_demo_report_says(tmp_path):
    """Every line of README's excerpt is a line of the demo's report, with `...` for left-out cells."""
    demo_results(tmp_path / "runs")
    (report,) = write_reports(["demo"], tmp_path / "runs", tmp_path / "out")
    lines = report.read_text().splitlines()
    excerpt = readme_demo_excerpt()
    assert len(excerpt) == 5
    for shown in excerpt:
        parts = [part.strip() for part in shown.split("...") if part.strip()]
        assert any(line.startswith(parts[0]) and _in_order(line, parts) for line in lines), shown


def _in_order(line: str, parts: list[str]) -> bool:
    """Whether `parts` occur in `line` one after the other."""
    position = 0
    for part in parts:
        position = line.find(part, position)
        if position < 0:
            return False
        position += len(part)
    return True


def test_a_header_names_a_flavour_only_when_every_row_has_it(tmp_path):
    rows = {f"m{m}": Row("table6", f"PatchMix m={m}", "ViT-S/2", 800, "cifar100", "knn") for m in (1, 2)}
    plan = Plan("table6", "two rows", [Stage("m1/pretrain", "pretrain", "cifar100_vit_s2_800ep_m1_official"),
                                       Stage("m1/knn", "knn", "default", after="m1/pretrain", rows=(rows["m1"],))])
    empty, reference = collect(tmp_path), load_reference()
    assert "Presets: `official` flavour." in plan_report(plan, empty, reference)
    plan.stages += [Stage("m2/pretrain", "pretrain", "debug_cpu"),
                    Stage("m2/knn", "knn", "default", after="m2/pretrain", rows=(rows["m2"],))]
    mixed = plan_report(plan, empty, reference)
    assert "`official` flavour" not in mixed and "Presets: flavour per row (column Flavour" in mixed
    assert [row["Flavour"] for row in table_rows(mixed).values()] == ["official", "other"]


@pytest.mark.slow
def test_a_real_inline_run_reports_the_epochs_it_trained(tmp_path):
    """The smoke plan plus the demo's random-initialisation row, run inline with 2 epochs (the plan's
    rows say 0): the report reads the epochs from the runs' own records."""
    plan = build_plan("smoke")
    plan.stages.append(Stage("smoke/random-init/seed0/knn", "knn", "default", ("source.encoder=random",),
                             after="smoke/m2/seed0/pretrain",
                             rows=(Row("smoke", "random init", "ViT-debug/4", 0, "synthetic", "knn"),)))
    launch(plan, "inline", tmp_path / "runs", ClusterConfig(), pretrain_overrides=["optim.epochs=2", "run.progress=false"],
           eval_overrides=["run.progress=false"], echo=lambda _: None)
    results, _ = split_superseded(collect(tmp_path / "runs"))
    text = plan_report(plan, results, load_reference())
    rows = table_rows(text)
    assert rows["PatchMix m=2", "knn"]["Epochs"] == rows["PatchMix m=2", "linear"]["Epochs"] == "2"
    assert rows["random init", "knn"]["Epochs"] == "0"
    assert OWN_PRESETS in text and {row["Flavour"] for row in rows.values()} == {"other"}
