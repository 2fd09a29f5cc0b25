"""Table 6 (m = 1..4, seeds, kNN and linear) on Fashion-MNIST inside `make gpu-check`: the plan run
through the launcher, its report with claim verdicts, and the kNN of its random-initialisation row
(the weights the runs start from: how far pretraining lifted the features).

The plan runs as `python -m slurm run table6 --executor inline ...` and the report as
`python -m reports table6 ...`, each in a subprocess: the launcher and the reports are entry points
that nothing imports (docs/architecture.md). What this module reads back are their files: the
results CSV and the report's claims table.
"""
from __future__ import annotations

import csv
import gzip
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.datasets import synthetic_arrays

PLAN = "table6"
ROWS = ("m1", "m2", "m3", "m4")
RANDOM_INIT_ROW = "m1-random-init"  # the plan's random-initialisation stages (plans/tables.py)


@dataclass(frozen=True)
class StudySize:
    """Which runs and how long: `pretrain_overrides` / `eval_overrides` go to the launcher's --set /
    --eval-set; `generated_images` > 0 writes a Fashion-MNIST-shaped dataset of that many training
    images (a quarter as many test images) instead of reading the real one; `reserve_s` is what the
    report keeps of the study's budget."""

    dataset: str
    seeds: tuple[int, ...]
    pretrain_overrides: tuple[str, ...]
    eval_overrides: tuple[str, ...]
    generated_images: int
    reserve_s: float


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format Fashion-MNIST ships in), gzipped: magic, dims, big-endian sizes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(side).to_bytes(4, "big") for side in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist_like(root: Path, train_images: int) -> Path:
    """Class-conditional grey 28 x 28 images with 10 classes in Fashion-MNIST's file layout (the
    repository's synthetic generator, channels averaged), for CPU smoke runs of the study."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_images, 0), ("t10k", max(train_images // 4, 1), 1)):
        images, labels = synthetic_arrays(count, 10, 28, seed)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images.mean(axis=3).round())
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def _seeds(size: StudySize) -> str:
    return ",".join(map(str, size.seeds))


def plan_command(size: StudySize, runs_root: Path, extra_pretrain: tuple[str, ...] = (),
                 dry_run: bool = False) -> list[str]:
    """The launcher command of the study (inline: stages one after the other in one process)."""
    return [sys.executable, "-m", "slurm", "run", PLAN, "--executor", "inline", "--datasets", size.dataset,
            "--seeds", _seeds(size), "--output-root", str(runs_root), *(["--dry-run"] if dry_run else []),
            "--set", *size.pretrain_overrides, *extra_pretrain, "--eval-set", *size.eval_overrides]


def report_command(size: StudySize, runs_root: Path, report_dir: Path) -> list[str]:
    return [sys.executable, "-m", "reports", PLAN, "--output-root", str(runs_root), "--out", str(report_dir),
            "--datasets", size.dataset, "--seeds", _seeds(size), "--csv", str(report_dir / "results.csv")]


def _run(command: list[str], timeout_s: float, log: Path) -> str:
    """Run a command with its output in `log`; 'ok', 'timeout' or 'exit N'."""
    with open(log, "w") as handle:
        try:
            status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                    timeout=max(timeout_s, 1)).returncode
        except subprocess.TimeoutExpired:
            return "timeout"
    return "ok" if status == 0 else f"exit {status}"


def row_results(results_csv: Path, dataset: str) -> dict[str, dict]:
    """{row: {knn: [top-1 at k = 20 per seed], linear: [best-epoch top-1 per seed]}} of the plan's
    evaluations, from the CSV `python -m reports --csv` writes."""
    rows: dict[str, dict] = {row: {"knn": [], "linear": []} for row in ROWS}
    with open(results_csv, newline="") as handle:
        for record in csv.DictReader(handle):
            parts = record["experiment"].split("/")  # table6/<dataset>/<row>/seed<k>/<protocol>
            if len(parts) != 5 or parts[:2] != [PLAN, dataset] or parts[2] not in rows:
                continue
            metric = {"knn": "metric.top1_k20", "linear": "metric.top1_best"}.get(parts[4])
            if metric and record.get(metric):
                rows[parts[2]][parts[4]].append(float(record[metric]))
    return rows


def random_init_knn(results_csv: Path, dataset: str) -> float | None:
    """Mean kNN top-1 (k = 20) over seeds of the plan's random-initialisation row (the weights the m = 1
    runs start from, which every row's runs share): the floor pretraining has to lift. None: not run."""
    key = re.compile(rf"{PLAN}/{re.escape(dataset)}/{RANDOM_INIT_ROW}/seed\d+/knn")
    with open(results_csv, newline="") as handle:
        values = [float(record["metric.top1_k20"]) for record in csv.DictReader(handle)
                  if key.fullmatch(record["experiment"]) and record.get("metric.top1_k20")]
    return statistics.fmean(values) if values else None


def claim_verdicts(report: Path) -> list[dict]:
    """The rows of the report's claims table: claim, protocol, paired difference and verdict."""
    lines = report.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ") and "claims" in line.lower()), None)
    if start is None:
        return []
    table = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    if len(table) < 3:
        return []
    header, body = table[0], table[2:]  # table[1] is the |---| line
    protocol = next((i for i, name in enumerate(header) if name.lower() == "protocol"), None)
    difference = next((i for i, name in enumerate(header) if name.lower().startswith("paired")), None)
    return [{"claim": row[0], "protocol": row[protocol] if protocol is not None else "",
             "paired_difference": row[difference] if difference is not None else "", "verdict": row[-1]}
            for row in body if len(row) == len(header)]


def summarise(rows: dict[str, dict], random_knn: float | None) -> dict:
    """Mean kNN and linear per row, and each row's kNN lift over random initialisation; `lift_min`
    (the weakest row's) is the study's figure."""
    summary = {}
    for row, values in rows.items():
        knn = statistics.fmean(values["knn"]) if values["knn"] else None
        linear = statistics.fmean(values["linear"]) if values["linear"] else None
        summary[row] = {"knn_mean": knn, "linear_mean": linear,
                        "knn_seeds": len(values["knn"]), "linear_seeds": len(values["linear"]),
                        "knn_lift": knn - random_knn if knn is not None and random_knn is not None else None}
    lifts = [item["knn_lift"] for item in summary.values() if item["knn_lift"] is not None]
    return {"rows": summary, "random_init_knn": random_knn, "lift_min": min(lifts) if lifts else None,
            "rows_with_results": len(lifts)}


def measure(size: StudySize, work: Path, report_dir: Path, budget_s: float,
            extra_pretrain: tuple[str, ...] = ()) -> dict:
    """Run the plan (cut at the budget less the reserve), write its report, read its rows back."""
    runs_root, logs = work / "runs", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    if size.generated_images:
        data_root = write_fashion_mnist_like(work / "fashion-mnist-like", size.generated_images)
        extra_pretrain = (*extra_pretrain, f"data.root={data_root}")
    plan_status = _run(plan_command(size, runs_root, extra_pretrain), budget_s - size.reserve_s, logs / "plan.log")
    report_status = _run(report_command(size, runs_root, report_dir), size.reserve_s / 2, logs / "report.log")
    results_csv, report = report_dir / "results.csv", report_dir / f"{PLAN}.md"
    rows = row_results(results_csv, size.dataset) if results_csv.is_file() else {}
    random_knn = random_init_knn(results_csv, size.dataset) if results_csv.is_file() else None
    return {"plan": PLAN, "dataset": size.dataset, "seeds": list(size.seeds), "plan_status": plan_status,
            "report_status": report_status, "report": str(report) if report.is_file() else None,
            "claims": claim_verdicts(report) if report.is_file() else [], **summarise(rows, random_knn),
            "pretrain_overrides": [*size.pretrain_overrides, *extra_pretrain],
            "eval_overrides": list(size.eval_overrides), "runs": str(runs_root)}
