"""Intervals, paired differences and claim verdicts, by hand-checked numbers."""
from __future__ import annotations

import pytest

from reports.__main__ import write_reports
from reports.statistics import HOLDS, NOT_RESOLVED, REVERSED, mean_interval, paired_difference, verdict

from test_reports import write_result


def test_t_interval_of_a_mean():
    interval = mean_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) = 4.303
    assert interval.mean == 2.0 and interval.half_width == pytest.approx(4.303 / 3 ** 0.5) and interval.n == 3
    assert mean_interval([5.0]) is None


def test_pairing_removes_the_seed_effect_that_the_means_keep():
    # The seeds move both rows together (70, 60, 80): unpaired intervals overlap widely, the paired
    # difference (+1 on every seed) is resolved.
    better, worse = {0: 71.0, 1: 61.0, 2: 81.0}, {0: 70.0, 1: 60.0, 2: 80.0}
    assert mean_interval(list(better.values())).low < mean_interval(list(worse.values())).high
    mean, interval, pairs = paired_difference(better, worse)
    assert (mean, interval.half_width, pairs) == (1.0, 0.0, 3)
    assert verdict(interval) == HOLDS
    assert verdict(paired_difference(worse, better)[1]) == REVERSED
    assert verdict(paired_difference({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0})[1]) == NOT_RESOLVED  # -1, +1
    assert paired_difference({0: 1.0}, {1: 2.0}) == (None, None, 0)  # no common seed


def test_report_with_three_seeds_gives_intervals_and_claim_verdicts(tmp_path):
    values = {"m1": (60.0, 50.0, 70.0), "m2": (62.0, 52.5, 71.5), "m3": (59.0, 49.5, 68.5), "m4": (60.0, 51.0, 69.0)}
    for row, knns in values.items():
        for seed, knn in enumerate(knns):
            base = f"table6/cifar100/{row}/seed{seed}"
            write_result(tmp_path / "runs", f"{base}/knn", "knn", {"top1_k20": knn}, seed)
    (report,) = write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1, 2), datasets=("cifar100",))
    text = report.read_text()
    # m=2 - m=1 = (2, 2.5, 1.5): mean 2.0, std 0.5, half width 4.303 * 0.5 / sqrt(3) = 1.242
    assert "| m = 2 beats m = 1 (MoCo v3) | cifar100 | ViT-S/2 | knn | +2.0 [0.8, 3.2] (n=3) | holds |" in text
    # m=3 - m=1 = (-1, -0.5, -1.5): mean -1.0, interval [-2.2, 0.2] contains 0
    assert "| m = 3 beats m = 1 (MoCo v3) | cifar100 | ViT-S/2 | knn | -1.0 [-2.2, 0.2] (n=3) | not resolved |" in text
    # m=3 - m=2 = (-3, -3, -3): reversed, zero width
    assert "| m = 3 beats m = 2 | cifar100 | ViT-S/2 | knn | -3.0 [-3.0, -3.0] (n=3) | reversed |" in text
    assert "| m = 3 beats m = 4 | cifar100 | ViT-S/2 | knn | -1.0 [-2.2, 0.2] (n=3) | not resolved |" in text
    m1 = next(line for line in text.splitlines() if line.startswith("| PatchMix m=1") and "knn" in line)
    assert "| 60.0 ± 10.0 |" in m1 and "| [35.2, 84.8] | — |" in m1  # 60 +- 4.303 * 10 / sqrt(3)
