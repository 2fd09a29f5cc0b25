"""Markdown tables: for every row of a plan, the paper's number, ours (mean +- std over seeds),
the difference, the protocol and preset, and provenance; with several seeds, the 95 % interval of
the mean and the paired difference with the plan's baseline row, then the verdict on each of the
paper's claims (reports/statistics.py; not comparable where a side did not learn beyond its random
initialisation); then the paper's other methods (MoCo v3, DINO, SDMP, iBOT,
...) for the same setting as reference rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pandas as pd

from plans.registry import headline
from plans.tables import RANDOM_INIT, Plan, Row, is_random_init, random_init_label
from reports.belonging import foreign_lines
from reports.statistics import Interval, mean_interval, not_comparable, paired_difference, verdict



class InconsistentResults(ValueError):
    """Results meant to be averaged were produced by different configs or code versions."""


@dataclass
class RowResult:
    row: Row
    paper: float | None
    mean: float | None
    std: float | None
    seeds: list[int]
    preset: str
    experiment_hash: str
    commit: str
    notes: list[str] = field(default_factory=list)  # results left out of the mean, unfinished pretraining
    values: dict[int, float] = field(default_factory=dict)  # seed -> the value averaged
    epochs: tuple[int, ...] = ()  # pretraining epochs of the runs averaged (0: a random initialisation)

    @property
    def trained_other_epochs(self) -> bool:
        """Its runs pretrained other epochs than its row names (an override at launch, e.g. optim.epochs)."""
        return bool(self.row.epochs and self.epochs and set(self.epochs) != {self.row.epochs})

    @property
    def interval(self) -> Interval | None:
        """95 % t interval of the mean over seeds (None with fewer than two)."""
        return mean_interval(list(self.values.values()))

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def paper_value(reference: pd.DataFrame, row: Row) -> float | None:
    match = reference[(reference.table == row.table) & (reference.method == row.method)
                      & (reference.backbone == row.backbone) & (reference.epochs == row.epochs)
                      & (reference.dataset == row.dataset) & (reference.protocol == row.protocol)]
    if match.empty or pd.isna(match.value.iloc[0]):
        return None
    return float(match.value.iloc[0])


def pretraining_epochs(results: pd.DataFrame) -> dict[str, int]:
    """{pretraining experiment hash: epochs} of the pretraining results: what an evaluation's
    `pretrain_experiment_hash` names (the plan's rows give the epochs planned, not those run)."""
    if results.empty or not {"stage", "experiment_hash", "epochs"} <= set(results.columns):
        return {}
    pretraining = results[(results.stage == "pretrain") & results.epochs.notna()]
    return {str(digest): int(epochs) for digest, epochs in zip(pretraining.experiment_hash, pretraining.epochs)}


def _epochs_run(record: pd.Series, epochs_by_pretraining: dict[str, int]) -> int | None:
    """The pretraining epochs behind an evaluation's result: 0 for a randomly initialised encoder,
    None when its pretraining result is not among the results (an imported encoder file)."""
    if record.get("encoder") == "random":
        return 0
    return epochs_by_pretraining.get(str(record.get("pretrain_experiment_hash")))


def _stage_results(results: pd.DataFrame, key: str) -> pd.DataFrame:
    if results.empty or "experiment" not in results:
        return results.iloc[0:0]
    return results[results.experiment == key]


def row_results(plan: Plan, results: pd.DataFrame, reference: pd.DataFrame) -> list[RowResult]:
    """Group each reported row's results over seeds; refuse to mix configs or code versions."""
    grouped: dict[Row, list[tuple[int, pd.Series]]] = {}
    presets: dict[Row, str] = {}
    for stage in plan.reported():
        matching = _stage_results(results, stage.key)
        for row in stage.rows:
            grouped.setdefault(row, [])
            presets[row] = f"{plan.stage(stage.after).preset if stage.after else stage.preset} / {stage.kind} {stage.preset}"
            for _, record in matching.iterrows():
                grouped[row].append((stage.seed, record))
    epochs_by_pretraining = pretraining_epochs(results)
    output = []
    for row, records in grouped.items():
        metric = f"metric.{headline(row.protocol)[0]}"
        averaged, notes = [], []
        for seed, record in records:
            value = record.get(metric)
            missing = value is None or (not isinstance(value, str) and pd.isna(value))
            if missing or not math.isfinite(float(value)):
                notes.append(f"seed {seed} left out: {metric[len('metric.'):]} is "
                             f"{'missing' if missing else value} in {record['result_path']}")
                continue
            averaged.append((seed, float(value)))
            complete = record.get("pretrain_complete")
            if complete is not None and not pd.isna(complete) and not bool(complete):
                step = record.get("checkpoint_step")
                step = "?" if step is None or pd.isna(step) else int(step)  # pandas holds it as a float
                notes.append(f"seed {seed} evaluated an unfinished pretraining run (checkpoint step {step}): "
                             f"{record['run_dir']}")
        values = [value for _, value in averaged]
        identities = {(_identity(r), str(r.get("git_commit", "unknown"))) for _, r in records}
        if len(identities) > 1:
            listing = "\n".join(f"  seed {seed}: experiment {_identity(r)} commit {r.get('git_commit')} ({r['run_dir']})"
                                for seed, r in records)
            raise InconsistentResults(f"refusing to average {row.method} {row.dataset} {row.protocol}: its results "
                                      f"come from different configs or code versions:\n{listing}")
        identity, commit = next(iter(identities)) if identities else ("", "")
        mean = sum(values) / len(values) if values else None
        std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0) if values else None
        epochs = {_epochs_run(record, epochs_by_pretraining) for _, record in records} - {None}
        output.append(_compared_at_its_epochs(RowResult(
            row, paper_value(reference, row), mean, std, sorted(seed for seed, _ in averaged), presets[row],
            identity, commit[:10], notes, dict(averaged), tuple(sorted(epochs)))))
    _note_not_learned(output)
    return output


def _compared_at_its_epochs(result: RowResult) -> RowResult:
    """`result` without the paper's number when its runs pretrained other epochs than the row (the paper's
    number is for the row's epochs), with a note saying so."""
    if not result.trained_other_epochs:
        return result
    epochs = ", ".join(map(str, result.epochs))
    note = (f"its runs pretrained {epochs} epochs, not the {result.row.epochs} of the plan "
            "(an override at launch)")
    if result.paper is not None:
        note += f": the paper's {result.row.epochs}-epoch number ({_number(result.paper)}) is not compared"
    return replace(result, paper=None, notes=[*result.notes, note])


def random_initialisation(results: list[RowResult], row: Row) -> RowResult | None:
    """The random-initialisation row with results in `row`'s setting (backbone, dataset, protocol;
    not epochs: its encoder trained for 0): the one of `row`'s method (the weights its runs start from)
    where the report has it, else the one its table's runs share."""
    candidates = [r for r in results if is_random_init(r.row.method) and r.values
                  and (r.row.backbone, r.row.dataset, r.row.protocol) == (row.backbone, row.dataset, row.protocol)]
    return next((r for name in (random_init_label(row.method), RANDOM_INIT) for r in candidates
                 if r.row.method == name), None)


# A protocol whose value does not grow with learning (an encoder that maps every image to one point has
# similarity 1) cannot say whether its method learned: that is judged on this protocol, evaluated on the
# same pretraining runs (the plan gives the rows of both, fig4).
LEARNING_JUDGED_ON = {"similarity": "knn"}


def judged_row(result: RowResult, results: list[RowResult]) -> RowResult | None:
    """The row on whose metric `learned` judges `result`: itself, or for a protocol of LEARNING_JUDGED_ON
    the row of the same method, backbone, epochs and dataset on the protocol it names (None: not in
    the report)."""
    protocol = LEARNING_JUDGED_ON.get(result.row.protocol)
    if protocol is None:
        return result
    same_runs = replace(result.row, protocol=protocol)
    return next((r for r in results if r.row == same_runs), None)


def learned(result: RowResult, results: list[RowResult]) -> bool | None:
    """Whether pretraining took `result`'s method above the random initialisation of the same
    architecture and seeds, on this row's own metric: True when the 95 % interval of the paired
    difference (pretrained - random init) lies above 0; False when its lower end does not (below
    the initialisation, or straddling it: not shown to have learned anything); None when it cannot
    be judged: no random-initialisation row in the setting, or fewer than two common seeds.

    Judged per protocol, never carried over from another: a linear probe can read features that a
    kNN vote cannot (and the reverse), so a method may learn on one protocol's metric and not on the
    other's. A claim is judged on the protocol it compares, and where that protocol has no
    random-initialisation row its verdict stands as it is. The exception is a protocol whose value does
    not measure learning at all (LEARNING_JUDGED_ON: the similarity of Figure 4), judged on the kNN of
    the same runs."""
    judged = judged_row(result, results)
    if judged is None or is_random_init(judged.row.method) or not judged.values:
        return None
    initial = random_initialisation(results, judged.row)
    if initial is None:
        return None
    _, interval, _ = paired_difference(judged.values, initial.values)
    return None if interval is None else interval.low > 0


def _note_not_learned(results: list[RowResult]) -> None:
    """Star each row whose method did not learn at this scale, with the gain that says so."""
    for result in results:
        if learned(result, results) is False:
            judged = judged_row(result, results)
            gain = _paired(judged, random_initialisation(results, judged.row))
            on = "" if judged is result else f" on {judged.row.protocol} (the same runs)"
            result.notes.append(f"did not learn at this scale: pretrained − random init{on} {gain} does not lie "
                                f"above 0 (its claims on {result.row.protocol} are not comparable)")


def _identity(record: pd.Series) -> str:
    """What must agree between seeds: the evaluation's and its pretraining's seedless config hashes."""
    parts = [str(record.get("experiment_hash", ""))]
    if isinstance(record.get("pretrain_experiment_hash"), str):
        parts.append(record["pretrain_experiment_hash"])
    return "+".join(parts)


def _number(value: float | None, signed: bool = False, scale: float | None = None) -> str:
    """One decimal for accuracies (percent), three for similarities (in [-1, 1]); `scale` picks
    the precision from another value (a std printed like its mean)."""
    if value is None:
        return "—"
    digits = 3 if abs(value if scale is None else scale) < 1.5 else 1
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ours(result: RowResult, marked: bool = True) -> str:
    marker = " *" if result.notes and marked else ""  # see the notes under the table
    if result.mean is None:
        return "not run" + marker
    if len(result.seeds) > 1:
        return f"{_number(result.mean)} ± {_number(result.std, scale=result.mean)}{marker}"
    return _number(result.mean) + marker


def _epochs(result: RowResult) -> str:
    """The epochs its runs pretrained for; without their records, the plan's (— where it gives none)."""
    if result.epochs:
        return ", ".join(map(str, result.epochs))
    return str(result.row.epochs) if result.row.epochs else "—"


def preset_flavour(preset: str) -> str:
    """`official` (the published code), `paper` (the paper's text) or `other`, from the pretraining
    preset's name (the first part of a row's preset); docs/fidelity.md lists what each departs from."""
    pretraining = preset.split(" / ")[0]
    return next((flavour for flavour in ("official", "paper") if pretraining.endswith(f"_{flavour}")), "other")


OTHER_FLAVOUR = "`other`: neither the paper's text nor the published code"


def flavour_sentence(results: list[RowResult]) -> str:
    """The header's word on flavours: one flavour only when every row has it (the demo's presets,
    for one, have none, whatever flavour the report was asked for)."""
    flavours = {preset_flavour(r.preset) for r in results}
    if len(flavours) == 1 and flavours <= {"official", "paper"}:
        return f"Presets: `{flavours.pop()}` flavour."
    if flavours == {"other"}:
        return f"Presets: this suite's own (Flavour {OTHER_FLAVOUR})."
    return f"Presets: flavour per row (column Flavour; {OTHER_FLAVOUR})."


def _interval(interval: Interval | None, scale: float | None) -> str:
    if interval is None:
        return "—"
    return f"[{_number(interval.low, scale=scale)}, {_number(interval.high, scale=scale)}]"


def counterpart(results: list[RowResult], row: Row, method: str) -> RowResult | None:
    """The result of `method` in the same setting as `row` (backbone, epochs, dataset, protocol)."""
    return next((r for r in results if r.row.method == method and (r.row.backbone, r.row.epochs, r.row.dataset,
                                                                  r.row.protocol) ==
                 (row.backbone, row.epochs, row.dataset, row.protocol)), None)


def _paired(first: RowResult, second: RowResult | None) -> str:
    """first - second over their common seeds: mean [95 % interval] (n)."""
    if second is None or first is second:
        return "—"
    mean, interval, pairs = paired_difference(first.values, second.values)
    if mean is None:
        return "—"
    shown = _number(mean, signed=True, scale=first.mean)
    return f"{shown} {_interval(interval, first.mean)} (n={pairs})" if interval else f"{shown} (n={pairs})"


def markdown_table(results: list[RowResult], baseline: str = "") -> str:
    """One line per row. With more than one seed anywhere: the 95 % interval of the mean and the
    paired difference with the `baseline` row (same seeds: same data order and initialisation)."""
    statistics = any(len(r.seeds) > 1 for r in results)
    extra = " 95 % CI | Δ vs baseline (paired, 95 % CI) |" if statistics else ""
    lines = ["| Method | Backbone | Epochs | Dataset | Protocol | Paper | Ours | Δ | Seeds |" + extra
             + " Preset | Flavour | Config | Commit |",
             "|---|---|---|---|---|---|---|---|---|" + "---|---|" * statistics + "---|---|---|---|"]
    for r in results:
        metric, meaning = headline(r.row.protocol)
        protocol = r.row.protocol if metric == r.row.protocol else f"{r.row.protocol} ({meaning})"
        cells = (f" {_interval(r.interval, r.mean)} | {_paired(r, counterpart(results, r.row, baseline))} |"
                 if statistics else "")
        lines.append(f"| {r.row.method} | {r.row.backbone} | {_epochs(r)} | {r.row.dataset} | {protocol} | "
                     f"{_number(r.paper)} | {_ours(r)} | {_number(r.delta, signed=True, scale=r.mean)} | "
                     f"{','.join(map(str, r.seeds)) or '—'} |{cells} {r.preset} | {preset_flavour(r.preset)} | "
                     f"{r.experiment_hash or '—'} | {r.commit or '—'} |")
    return "\n".join(lines)


def claims_table(plan: Plan, results: list[RowResult]) -> str:
    """Each claim of the paper in this table, per setting where both rows have results: the paired
    difference (better - worse) over seeds with its 95 % interval, and the verdict: holds (interval
    above 0), reversed (below 0), not resolved (contains 0, or a single seed); or not comparable
    when either side did not learn at this scale on the claim's protocol (`learned`)."""
    lines = []
    for claim in plan.claims:
        for better in (r for r in results if r.row.method == claim.better and r.values
                       and (not claim.protocols or r.row.protocol in claim.protocols)):
            worse = counterpart(results, better.row, claim.worse)
            if worse is None or not worse.values:
                continue
            _, interval, pairs = paired_difference(better.values, worse.values)
            # A side no better than its random initialisation makes the difference meaningless for the claim.
            unlearned = [side.row.method for side in (better, worse) if learned(side, results) is False]
            outcome = (not_comparable(unlearned) if unlearned
                       else verdict(interval) + (" (one seed)" if pairs == 1 else ""))
            lines.append(f"| {claim.text} | {better.row.dataset} | {better.row.backbone} | {better.row.protocol} | "
                         f"{_paired(better, worse)} | {outcome} |")
    if not lines:
        return ""
    return "\n".join(["| Claim of the paper | Dataset | Backbone | Protocol | Paired Δ (95 % CI, seeds) | At this scale |",
                      "|---|---|---|---|---|---|", *lines])


def pretraining_gain_table(results: list[RowResult]) -> str:
    """What pretraining added: each pretrained row minus the randomly initialised encoder of the same
    setting (backbone, dataset, protocol) that its runs start from (`random_initialisation`), paired over
    seeds (same seed: the same initial weights), with its 95 % interval, and whether the method learned
    at this scale (`learned`)."""
    settings = dict.fromkeys((r.row.backbone, r.row.dataset, r.row.protocol)
                             for r in results if is_random_init(r.row.method) and r.values)  # in report order
    lines = []
    for setting in settings:
        for trained in results:
            if is_random_init(trained.row.method) or not trained.values or \
                    (trained.row.backbone, trained.row.dataset, trained.row.protocol) != setting:
                continue
            initial = random_initialisation(results, trained.row)
            if initial is not None:
                lines.append(f"| {trained.row.method} | {trained.row.dataset} | {trained.row.backbone} | "
                             f"{trained.row.protocol} | {_ours(trained, marked=False)} | "
                             f"{_ours(initial, marked=False)} | {_paired(trained, initial)} | "
                             f"{LEARNED[learned(trained, results)]} |")
    if not lines:
        return ""
    return "\n".join(["| Pretrained row | Dataset | Backbone | Protocol | Pretrained | Random init | "
                      "Pretrained − random init (paired, 95 % CI) | Learned at this scale |",
                      "|---|---|---|---|---|---|---|---|", *lines])


LEARNED = {True: "yes", False: "did not learn at this scale", None: "not judged (under two seeds)"}


FIDELITY_DOC = "docs/fidelity.md"
PAPER_COLUMNS = ("finetune", "linear", "knn", "ap_box", "ap_mask")  # the paper's column order in Tables 2-4
MAIN_TABLES = ("table2", "table3", "table4")  # where the paper compares with MoCo v3, DINO, iBOT, SDMP, ...


def reference_table(reference: pd.DataFrame, rows: list[Row], table: str) -> str:
    """The paper's numbers for every method evaluated in the same settings (dataset and backbone)
    as our rows: its main comparison tables plus the plan's own table. The paper's notes on a row
    (Table 4: the detector protocol; multi-crop; FLOPs) go in a Note column."""
    settings = {(r.dataset, r.backbone) for r in rows}
    subset = reference[reference.table.isin([*MAIN_TABLES, table])
                       & reference.apply(lambda r: (r.dataset, r.backbone) in settings, axis=1)]
    if subset.empty:
        return ""
    index = ["dataset", "backbone", "table", "method", "epochs"]
    pivot = subset.pivot_table(index=index, columns="protocol", values="value", aggfunc="first", sort=False)
    notes = (subset.assign(note=subset["note"].fillna("").astype(str)).groupby(index, sort=False)["note"]
             .agg(lambda values: "; ".join(dict.fromkeys(v for v in values if v))))
    columns = [c for c in PAPER_COLUMNS if c in pivot.columns]
    run_here = {(r.method, r.dataset, r.backbone, r.epochs) for r in rows}
    lines = ["| Dataset | Backbone | Paper table | Method | Epochs | " + " | ".join(columns) + " | Source | Note |",
             "|---|---|---|---|---|" + "---|" * (len(columns) + 2)]
    for key, values in pivot.iterrows():
        dataset, backbone, table, method, epochs = key
        cells = " | ".join(_number(None if pd.isna(values[c]) else float(values[c])) for c in columns)
        # Every number here is the paper's; a method the plan also runs in this setting says so.
        source = "paper's number; also a row run here (above)" if (method, dataset, backbone, epochs) in run_here \
            else "paper's number only"
        lines.append(f"| {dataset} | {backbone} | {table} | {method} | {epochs} | {cells} | {source} | "
                     f"{notes.get(key) or '—'} |")
    return "\n".join(lines)


NOT_LEARNED_SENTENCE = (" A claim with a method that did not learn at this scale on the claim's protocol (its "
                        "pretrained − random init interval not above 0, below) is not comparable.")
# Said where a report has a protocol judged on another one (LEARNING_JUDGED_ON).
JUDGED_ON_SENTENCE = (" A similarity does not grow with learning (an encoder that maps every image to one point has "
                      "similarity 1), so whether a method learned is judged on the knn of the same runs.")


def plan_report(plan: Plan, results: pd.DataFrame, reference: pd.DataFrame,
                figures: list[str] = (), superseded: pd.DataFrame | None = None,
                damaged: list[tuple[str, str]] = (), unreported: str = "",
                foreign: list[tuple[str, str]] = ()) -> str:
    """The plan's report. `superseded`, `damaged` and `foreign` (reports/belonging.split_foreign): the
    results left out before `results`, each listed with its path."""
    rows = row_results(plan, results, reference)
    done = sum(r.mean is not None for r in rows)
    other_epochs = sum(r.trained_other_epochs for r in rows)
    epochs_sentence = (f"The runs of {other_epochs} row{'s' * (other_epochs > 1)} pretrained other "
                       "epochs than the plan's (the Epochs column, notes below). ") if other_epochs else ""
    parts = [f"# {plan.name}: {plan.description}", "",
             f"{epochs_sentence}{flavour_sentence(rows)} {done} of {len(rows)} rows have results. "
             "Ours: mean ± std over seeds (sample std); Δ = ours − paper. kNN: top-1 at k = 20 "
             "(all k in each result.json); linear and finetune: best-epoch top-1 (last epoch in result.json). "
             f"Where each flavour departs from the paper's text or the published code: {FIDELITY_DOC}.", "",
             markdown_table(rows, plan.baseline)]
    claims = claims_table(plan, rows)
    has_initial = any(is_random_init(r.row.method) and r.values for r in rows)  # else no claim is judged so
    if claims:
        parts += ["", "## The paper's claims at this scale", "",
                  f"Baseline row: {plan.baseline}. Δ columns are paired over seeds (same seed: same data order and "
                  "initialisation); a claim holds when the 95 % interval of its paired difference lies above 0, is "
                  "reversed when it lies below 0, and is not resolved otherwise." + NOT_LEARNED_SENTENCE * has_initial
                  + JUDGED_ON_SENTENCE * (has_initial and any(r.row.protocol in LEARNING_JUDGED_ON for r in rows)),
                  "", claims]
    gains = pretraining_gain_table(rows)
    if gains:
        parts += ["", "## What pretraining added", "",
                  f"Each pretrained row against the weights its runs started from, evaluated before any training: "
                  f"its own \"<method>: {RANDOM_INIT}\" row (the same architecture, initialisation scheme and seed; "
                  f"methods initialise differently), or the \"{RANDOM_INIT}\" row its table's runs share. A method "
                  "learned at this scale when the interval lies above 0; one that did not is starred above, per "
                  "protocol.", "", gains]
    notes = [f"- {r.row.method} {r.row.dataset} {r.row.protocol}: {note}" for r in rows for note in r.notes]
    if notes:
        parts += ["", "\\* Seeds lists the seeds averaged. Notes:", "", *notes]
    if unreported:
        parts += ["", unreported]
    if damaged:
        parts += ["", f"Unreadable result files, reported nowhere ({len(damaged)}):", "",
                  *[f"- {path}: {reason}" for path, reason in damaged]]
    for figure in figures:
        parts += ["", f"![{figure}]({figure})"]
    keys = {stage.key for stage in plan.stages}
    if superseded is not None and not superseded.empty and "experiment" in superseded:
        old = superseded[superseded.experiment.isin(keys)]
        if not old.empty:
            parts += ["", f"Left out: {len(old)} older result(s) of the same stages, superseded by newer runs "
                          "(another config or code version):", ""]
            parts += [f"- `{record.experiment}`: {record.run_dir} (commit {str(record.get('git_commit', 'unknown'))[:10]})"
                      for _, record in old.iterrows()]
    parts += foreign_lines(foreign)
    reference_rows = reference_table(reference, [r.row for r in rows], plan.name)
    if reference_rows:
        parts += ["", "## The paper's numbers for all methods (reference)", "",
                  "Numbers copied from the paper, trained by other code and budgets. Rows run by this suite (PatchMix, "
                  "and DINO and SDMP where the plan has them) are the table above, under the same protocols.", "",
                  reference_rows]
    return "\n".join(parts) + "\n"
