"""The tuning's report (plans/tuning.py): `tuning.csv`, one row per trial (method, each tried value in
its own column, the seeds, validation kNN top-1 at k = 20, whether it was chosen), and `tuning.md`, the
procedure in a few lines and each method's chosen point.

The choice: per method, the trial with the highest validation kNN top-1 (its mean over seeds, rounded
to KNN_DECIMALS); a tie goes to the lower learning rate, then to the earlier trial in the plan's order.
`read_chosen_points` reads the choice back from a committed tuning.csv (the presets are checked
against it).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plans.tables import Plan
from plans.tuning import SCALES, Trial, TrialSchedule, TunedMethod, point_label
from reports.tables import row_results

LEARNING_RATE = "optim.base_lr"  # what a tie between two trials is broken on: the lower one is chosen
KNN_DECIMALS = 3  # the precision of the ranking (a kNN over 2,000 queries moves in steps of 0.05 points)
KNN_COLUMN = "validation_knn_top1"
FIXED_COLUMNS = ("method", "seeds", KNN_COLUMN, "chosen")
CHOSEN, NOT_CHOSEN = "yes", "no"
NO_REFERENCE = pd.DataFrame(columns=["table", "method", "backbone", "epochs", "dataset", "protocol", "value", "note"])


@dataclass
class ScoredPoint:
    """One point of one method's grid (one trial per seed) and its validation kNN over the seeds."""

    method: str
    point: dict[str, str]
    seeds: list[int]
    knn: float | None  # mean top-1 over the seeds with a result, rounded; None: no trial finished

    def learning_rate(self) -> float:
        return float(self.point.get(LEARNING_RATE, "0"))


def score_points(plan: Plan, trials: list[Trial], results: pd.DataFrame) -> list[ScoredPoint]:
    """Each point of the tuning, in the plan's order, with its validation kNN (results: the collected
    result.json rows that belong to the plan, newest per stage)."""
    by_row = {result.row.method: result for result in row_results(plan, results, NO_REFERENCE)}
    scored: dict[str, ScoredPoint] = {}
    for trial in trials:
        if trial.row_method in scored:
            continue
        result = by_row.get(trial.row_method)
        mean = None if result is None or result.mean is None else round(result.mean, KNN_DECIMALS)
        scored[trial.row_method] = ScoredPoint(trial.method, dict(trial.point), result.seeds if result else [], mean)
    return list(scored.values())


def choose(points: list[ScoredPoint]) -> dict[str, ScoredPoint]:
    """{method: its chosen point}: the highest validation kNN; a tie goes to the lower learning rate,
    then to the earlier point. Methods without any result are absent."""
    chosen: dict[str, ScoredPoint] = {}
    for point in points:  # in order: an exact tie in both keeps the earlier point
        if point.knn is None:
            continue
        best = chosen.get(point.method)
        if best is None or (point.knn, -point.learning_rate()) > (best.knn, -best.learning_rate()):
            chosen[point.method] = point
    return chosen


def tuning_table(points: list[ScoredPoint]) -> pd.DataFrame:
    """One row per point: method, each tried key (empty where the method has no such key), the seeds,
    validation kNN top-1 and whether it was chosen."""
    chosen = {id(point) for point in choose(points).values()}
    keys = list(dict.fromkeys(key for point in points for key in point.point))
    rows = [{"method": point.method, **{key: point.point.get(key, "") for key in keys},
             "seeds": " ".join(map(str, point.seeds)), KNN_COLUMN: "" if point.knn is None else f"{point.knn:g}",
             "chosen": CHOSEN if id(point) in chosen else NOT_CHOSEN} for point in points]
    return pd.DataFrame(rows, columns=["method", *keys, *FIXED_COLUMNS[1:]])


def tuning_markdown(points: list[ScoredPoint], methods: dict[str, TunedMethod], presets: dict[str, tuple[str, str]],
                    schedule: TrialSchedule, scale: str, seeds: tuple[int, ...]) -> str:
    """The procedure in a few lines, then each method's chosen point. presets: {method: (the preset its
    trials start from, the preset that takes its chosen point)}."""
    chosen = choose(points)
    counts = {name: sum(point.method == name for point in points) for name in methods}
    budget = ", ".join(sorted({str(count) for count in counts.values()}))
    images = (f"the first {schedule.training_images + schedule.validation_images:,} training images"
              if schedule.training_images else "the training images")
    bank = f"{schedule.training_images:,} training images" if schedule.training_images else "other training images"
    finished = sum(point.knn is not None for point in points)
    lines = [f"# Tuning at the {scale} scale", "",
             f"- Budget: {budget} trials per method ({', '.join(entry.label for entry in methods.values())}), "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: points of the grid each method "
             "declares (`tuning_space` in `pretrain/methods/`), a seeded draw in which every candidate value of "
             "every hyperparameter is tried equally often (give or take one), the point of the published recipe "
             "scaled down (before any tuning) always among them (`plans/tuning.py`).",
             f"- Split: {schedule.validation_images:,} validation images held out of {images} (a fixed seeded "
             f"draw, `data.validation_size`); each trial pretrains on the other {bank} and never reads the test "
             "set.",
             f"- Trial: the method's preset, the point's values, {schedule.epochs} epochs (warm-up "
             f"{schedule.warmup_epochs}); then kNN (top-1, k = 20) with the validation images as queries and the "
             "trial's training images as the bank (`knn.split=validation`).",
             "- Choice: per method, the trial with the highest validation kNN top-1 becomes its preset at this "
             "scale (`TUNED_POINTS` in the method's file); a tie goes to the lower learning rate, then to the "
             "earlier trial in the list.",
             f"- {finished} of {len(points)} trials have results. Every trial: [tuning.csv](tuning.csv).", "",
             "| method | trials start from | chosen point set in | chosen point | validation kNN top-1 |",
             "|---|---|---|---|---|"]
    for name, entry in methods.items():
        point = chosen.get(name)
        trial_preset, tuned_preset = presets[name]
        lines.append(f"| {entry.label} | `{trial_preset}` | `{tuned_preset}` | "
                     + (f"{point_label(point.point)} | {point.knn:g} |" if point else "no trial has a result | |"))
    return "\n".join(lines) + "\n"


def write_tuning_report(plan: Plan, trials: list[Trial], results: pd.DataFrame, out: Path,
                        methods: dict[str, TunedMethod], schedule: TrialSchedule, scale: str,
                        seeds: tuple[int, ...], flavour: str = "official") -> tuple[Path, Path]:
    """Write `<out>/tuning.csv` and `<out>/tuning.md`; returns their paths."""
    points = score_points(plan, trials, results)
    presets = {trial.method: (trial.preset, methods[trial.method].tuned_preset_name(SCALES.get(trial.dataset, ""),
                                                                                    flavour))
               for trial in trials}
    out.mkdir(parents=True, exist_ok=True)
    table_path, text_path = out / "tuning.csv", out / "tuning.md"
    tuning_table(points).to_csv(table_path, index=False)
    text_path.write_text(tuning_markdown(points, methods, presets, schedule, scale, seeds))
    return table_path, text_path


def read_chosen_points(path: Path) -> dict[str, dict[str, str]]:
    """{method: {key: value text}} of the rows of a tuning.csv marked chosen (the keys its method
    tried). A method chosen twice is refused: the file was edited by hand or is damaged."""
    chosen: dict[str, dict[str, str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("chosen") != CHOSEN:
                continue
            if row["method"] in chosen:
                raise ValueError(f"{path}: method {row['method']} has more than one chosen trial")
            chosen[row["method"]] = {key: value for key, value in row.items()
                                     if key not in FIXED_COLUMNS and value not in ("", None)}
    return chosen
