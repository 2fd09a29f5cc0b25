"""Statistics over seeds for the reports: 95 % confidence intervals of a mean (Student's t), paired
differences between two rows over the seeds both have (same seed = same data order and
initialisation, so the pairing removes most of the seed-to-seed noise), and the verdict on a claim
of the paper from the interval of its paired difference (or none, where a side did not learn)."""
from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom; the normal 1.960 beyond.
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

HOLDS, REVERSED, NOT_RESOLVED = "holds", "reversed", "not resolved"
NOT_COMPARABLE = "not comparable"


def t_quantile_95(degrees_of_freedom: int) -> float:
    if degrees_of_freedom < 1:
        raise ValueError("a confidence interval needs at least two values")
    return T_95[degrees_of_freedom - 1] if degrees_of_freedom <= len(T_95) else 1.960


@dataclass(frozen=True)
class Interval:
    """mean ± half_width: the 95 % confidence interval of the mean of n values."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_interval(values: list[float]) -> Interval | None:
    """The t interval of the mean; None for fewer than two values (no spread to estimate)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile_95(n - 1) * std / math.sqrt(n), n)


def paired_difference(first: dict[int, float], second: dict[int, float]) -> tuple[float | None, Interval | None, int]:
    """(mean difference, its interval, number of pairs) of first - second over the seeds both have."""
    seeds = sorted(set(first) & set(second))
    differences = [first[seed] - second[seed] for seed in seeds]
    if not differences:
        return None, None, 0
    return sum(differences) / len(differences), mean_interval(differences), len(differences)


def verdict(interval: Interval | None) -> str:
    """holds (the interval lies above 0), reversed (below 0), not resolved (it contains 0, or fewer
    than two seeds)."""
    if interval is None or interval.low <= 0 <= interval.high:
        return NOT_RESOLVED
    return HOLDS if interval.low > 0 else REVERSED


def not_comparable(methods: list[str]) -> str:
    """The verdict on a claim where `methods` (one side or both, as the report names them) did not learn
    at this scale: beating, or losing to, an encoder no better than its random initialisation says
    nothing about the claim, whatever the interval of the difference."""
    return f"{NOT_COMPARABLE} ({' and '.join(methods)} did not learn here)"
