"""The standardised-feature kNN protocol: the transform against its formula, and the protocol end
to end through the command line, the stage registry and a plan-free launch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from evaluate.knn_standardized import standardize
from plans.registry import STAGES, headline


def test_standardize_matches_the_formula():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 4, generator=generator) * 3 + 1, torch.randn(7, 4, generator=generator)
    got_train, got_test = standardize(train, test)
    for column in range(4):
        values = train[:, column].tolist()
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        torch.testing.assert_close(got_train[:, column], (train[:, column] - mean) / std)
        torch.testing.assert_close(got_test[:, column], (test[:, column] - mean) / std)


def test_the_protocol_is_a_stage_and_runs_from_the_command_line(pretrained_run):
    assert "knn_standardized" in STAGES and headline("knn_standardized")[0] == "top1_k20"
    completed = subprocess.run([sys.executable, "-m", "evaluate", "knn_standardized", "--from", str(pretrained_run),
                                "run.progress=false"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    (result_path,) = (pretrained_run / "eval").glob("knn_standardized-default-*/result.json")
    result = json.loads(result_path.read_text())
    assert result["protocol"] == "knn_standardized" and 0 <= result["metrics"]["top1_k20"] <= 100
