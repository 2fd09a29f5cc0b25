"""`make gpu-check`: the tiny scale end to end on the CPU (every part, every figure, the study's report),
the gpu scale's configs resolved without running, and the pieces that turn results into figures."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.end_to_end import throughput
from bench.gpu_check import GPU, TINY, evaluate_figure, figures, line, main
from bench.isolated import Outcome, run_isolated
from bench.study import claim_verdicts, row_results, summarise


def test_tiny_check_runs_every_part_and_reports_every_figure(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--scale", "tiny", "--out", str(tmp_path),
                                "--work", str(tmp_path / "work")],
                               capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {name: part["status"] for name, part in record["parts"].items()} == {
        "step:debug": "ok", "augmentation": "ok", "knn": "ok", "end_to_end": "ok", "study": "ok"}
    assert [f["name"] for f in record["figures"]] == [f.name for f in figures(TINY)]
    for figure in record["figures"]:
        # Measured; a lift of 1 epoch at toy size may be 0 or below (the runs' own initial weights are its floor).
        assert isinstance(figure["value"], float) and (figure["value"] > 0 or figure["name"] == "study_knn_lift"), figure
        assert isinstance(figure["target"], (int, float)) and isinstance(figure["passed"], bool), figure
        assert figure["label"] in completed.stdout  # one printed line per figure
    study = record["figures"][-1]["details"]
    assert (tmp_path / "study" / "table6.md").is_file() and (tmp_path / "study" / "results.csv").is_file()
    assert study["claims"] and all(claim["verdict"] for claim in study["claims"])
    assert all(row["knn_seeds"] == 2 and row["linear_seeds"] == 2 for row in study["rows"].values())
    assert record["git_commit"] and record["device"]["name"] == "cpu"


def test_gpu_scale_configs_resolve_and_fit_eleven_minutes(tmp_path, capsys):
    # The study's plan goes through the launcher's own --dry-run.
    main(["--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    output = capsys.readouterr().out
    # 4 rows x 3 seeds x (pretrain, knn, linear), and each seed's random initialisation (knn, linear)
    assert "[table6] 42 would submit" in output
    assert sum(GPU.budgets.values()) <= 11 * 60 - 30
    assert set(GPU.budgets) == {f"step:{config}" for config in GPU.steps.configs.values()} | {
        "augmentation", "knn", "end_to_end", "study"}


def test_gpu_scale_refuses_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit) as raised:
        main(["--out", str(tmp_path), "--work", str(tmp_path / "work"), "--parts", "knn"])
    assert raised.value.code == 2


def test_a_part_over_its_budget_is_killed_and_its_figure_says_so(tmp_path):
    started = time.perf_counter()
    outcome = run_isolated(lambda: time.sleep(60) or {}, 1.0, tmp_path / "slow.json")
    assert outcome.status == "timeout" and time.perf_counter() - started < 10
    failed = run_isolated(lambda: 1 / 0, 10.0, tmp_path / "failed.json")
    assert failed.status == "failed" and "ZeroDivisionError" in failed.error
    figure = next(f for f in figures(GPU) if f.name == "end_to_end")
    record = evaluate_figure(figure, {"end_to_end": outcome}, GPU)
    assert record["value"] is None and record["passed"] is None
    assert "end_to_end: timeout" in record["not_measured"] and "step:vit_s16_224: not run" in record["not_measured"]
    assert line(record).startswith(f"{figure.label}: not measured")


def test_a_study_whose_report_failed_is_not_measured_and_says_why():
    """The study part finished but its report refused the results (e.g. seeds from two code
    versions): no rows, no lift. The figure says so instead of the check crashing on it."""
    figure = next(f for f in figures(TINY) if f.name == "study_knn_lift")
    result = {"plan": "table6", "plan_status": "ok", "report_status": "exit 2", "report": None, "claims": [],
              **summarise({}, None)}
    record = evaluate_figure(figure, {"study": Outcome("ok", 20.0, 300, result)}, TINY)
    assert record["value"] is None and record["passed"] is None
    assert record["not_measured"] == "no row has a kNN lift (plan ok, report exit 2)"
    assert line(record) == f"{figure.label}: not measured (no row has a kNN lift (plan ok, report exit 2)); " \
                           "target >= 15 points"


def test_figures_compare_with_their_targets():
    figure = next(f for f in figures(GPU) if f.name == "knn")
    knn = {"bank": 10, "queries": 5, "dim": 4, "results": [
        {"backend": "torch", "device": "cuda:0", "half_precision": True, "seconds_best": 0.8},
        {"backend": "torch", "device": "cuda:0", "half_precision": False, "seconds_best": 1.6}]}
    record = evaluate_figure(figure, {"knn": Outcome("ok", 1.0, 30, knn)}, GPU)
    assert record["value"] == 0.8 and record["passed"] is True and record["ratio_to_baseline"] == 0.5


def test_end_to_end_throughput_skips_the_warm_up():
    records = [{"step": 10, "time": 100.0}, {"step": 20, "time": 130.0}, {"step": 30, "time": 131.0},
               {"step": 40, "time": 132.0}]
    measured = throughput(records, batch=128, warmup_steps=20)
    assert measured["img_per_s"] == pytest.approx(20 * 128 / 2.0) and measured["from_step"] == 20


def test_study_reads_rows_and_claims(tmp_path):
    (tmp_path / "results.csv").write_text(
        "experiment,stage,protocol,seed,metric.top1_best,metric.top1_k20,run_dir\n"
        "table6/fashion_mnist_gpu/m1/seed0/knn,evaluate,knn,0,,70.0,a\n"
        "table6/fashion_mnist_gpu/m1/seed1/knn,evaluate,knn,1,,72.0,b\n"
        "table6/fashion_mnist_gpu/m1/seed0/linear,evaluate,linear,0,75.0,,c\n"
        "table6/fashion_mnist_gpu/m1/seed0/pretrain,pretrain,,0,,,d\n"
        "table6/cifar10/m2/seed0/knn,evaluate,knn,0,,90.0,e\n")
    rows = row_results(tmp_path / "results.csv", "fashion_mnist_gpu")
    assert rows["m1"] == {"knn": [70.0, 72.0], "linear": [75.0]} and rows["m2"] == {"knn": [], "linear": []}
    summary = summarise(rows, random_knn=56.0)
    assert summary["lift_min"] == 15.0 and summary["rows_with_results"] == 1
    (tmp_path / "table6.md").write_text(
        "# table6\n\n## The paper's claims at this scale\n\ntext\n\n"
        "| Claim of the paper | Dataset | Backbone | Protocol | Paired Δ (95 % CI, seeds) | At this scale |\n"
        "|---|---|---|---|---|---|\n"
        "| m = 2 beats m = 1 (MoCo v3) | fashion_mnist | ViT-mini/4 | knn | +1.0 [0.2, 1.8] (n=3) | holds |\n\n"
        "![plot](x.png)\n")
    assert claim_verdicts(tmp_path / "table6.md") == [{"claim": "m = 2 beats m = 1 (MoCo v3)", "protocol": "knn",
                                                       "paired_difference": "+1.0 [0.2, 1.8] (n=3)",
                                                       "verdict": "holds"}]
