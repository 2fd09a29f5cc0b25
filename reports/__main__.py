"""`python -m reports [PLAN ...] [--output-root runs] [--out reports/out]`: markdown + PNG per plan.
`python -m reports sweep NAME [--output-root runs] [--out reports/out]`: a sweep's grouped table.
`python -m reports tune [--output-root runs] [--out reports/out] [--datasets fashion_mnist]`: the tuning's
tuning.csv (every trial) and tuning.md (the procedure and each method's chosen point).

Reads only result.json files under the output root; rows without results say "not run".
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.cli import parse_items, parse_seeds
from reports.belonging import split_foreign
from reports.collect import collect, load_reference, split_superseded
from reports.plots import plot_against, plot_bars, plot_loss_curves, plot_similarity
from reports.tables import InconsistentResults, plan_report, row_results
from plans.launches import launched
from plans.sweeps import load_sweep, sweep_plan
from reports.sweeps import sweep_report
from reports.tuning import write_tuning_report
from plans.tables import ALIASES, PLANS, build_plan, is_random_init
from plans.tuning import SCALES, TUNED_METHODS, schedule_for, tuning_trials

PLANS_WITHOUT_DATASETS = ("table2", "table4", "demo", "smoke")
# Plans with a report of their own kind, not a plan_report: written by their own subcommand only.
PLANS_OF_THEIR_OWN = ("tune",)


def left_out(plan, results) -> str:
    """A sentence naming the seeds and datasets of this plan's results that the report does not
    show (results of other stage keys under the plan's name), or ""."""
    if results.empty or "experiment" not in results:
        return ""
    keys = {stage.key for stage in plan.stages}
    others = sorted({str(e) for e in results.experiment.dropna() if str(e).startswith(f"{plan.name}/")} - keys)
    if not others:
        return ""
    seeds = sorted({int(part[4:]) for key in others for part in key.split("/")
                    if part.startswith("seed") and part[4:].isdigit()})
    shown = {part for stage in plan.stages for part in stage.key.split("/")[1:2]}
    datasets = sorted({key.split("/")[1] for key in others} - shown)
    parts = [f"seeds {', '.join(map(str, seeds))}" if seeds else "", f"datasets {', '.join(datasets)}" if datasets else ""]
    return (f"Results of {len(others)} stage(s) exist that this report leaves out ({'; '.join(p for p in parts if p)}): "
            "name them with --seeds / --datasets (make report SEEDS=... DATASET=...).")


def figures_for(plan, rows, results, out: Path) -> list[str]:
    """The plan's figures (file names relative to `out`), only for rows that have results."""
    with_results = [r for r in rows if r.mean is not None]
    if not with_results:
        return []
    figures = []
    if plan.name == "table6":
        plot_against([r for r in rows if not is_random_init(r.row.method)], lambda r: int(r.row.method.split("m=")[1]),
                     "number of mixed images m", "Mix number", out / "table6_mix_number.png")
        figures.append("table6_mix_number.png")
    elif plan.name == "fig4":
        labels = {}  # one similarity stage per method (the first seed's): one colour each
        for stage in plan.reported():
            if stage.kind == "similarity" and stage.rows[0].method not in labels.values():
                labels[stage.key] = stage.rows[0].method
        if plot_similarity(results, labels, out / "fig4_similarity.png"):
            figures.append("fig4_similarity.png")
    elif plan.name == "fig5":
        plot_against(rows, lambda r: r.row.epochs, "pretraining epochs", "Epochs", out / "fig5_epochs.png",
                     group_of=lambda r: r.row.backbone)
        figures.append("fig5_epochs.png")
    else:
        has_paper = any(r.paper is not None for r in with_results)
        plot_bars(with_results, f"{plan.name}: ours" + (" (bars) and the paper (black ticks)" if has_paper else ""),
                  out / f"{plan.name}.png")
        figures.append(f"{plan.name}.png")
    if plan.name == "demo":
        curves = {s.key: s.key.split("/")[1] for s in plan.stages if not s.after}  # the training runs
        if plot_loss_curves(results, curves, out / "demo_loss.png"):
            figures.append("demo_loss.png")
    return figures


def seeds_and_datasets(output_root: Path, name: str, flavour: str, seeds: tuple[int, ...],
                       datasets: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The seeds and datasets to report for plan `name`: those given, else those launched (the launch
    record is read only when something was not given), else seed 0 and the plan's datasets."""
    has_datasets = name not in PLANS_WITHOUT_DATASETS
    if seeds and (datasets or not has_datasets):
        return seeds, datasets if has_datasets else ()
    launched_seeds, launched_datasets = launched(output_root, name, flavour)
    return seeds or launched_seeds or (0,), (datasets or launched_datasets) if has_datasets else ()


def warn_foreign(name: str, foreign: list[tuple[str, str]]) -> None:
    """One warning line per result left out for another dataset, method or preset than its stage's."""
    for path, what in foreign:
        print(f"warning: {name}: left out {path}: {what} (averaged nowhere)", file=sys.stderr)


def write_reports(names: list[str], output_root: Path, out: Path, flavour: str = "official",
                  seeds: tuple[int, ...] = (), datasets: tuple[str, ...] = ()) -> list[Path]:
    """One markdown report (+ figures) per plan. Seeds and datasets not given are those launched
    for the plan (plans/launches.py), else seed 0 and the plan's datasets. Per plan, results that
    carry one of its stage keys but not that stage's dataset, method or preset are left out first
    (named in a warning and in the report), then older results of a stage are superseded."""
    collected = collect(output_root)
    damaged = collected.attrs.get("damaged", [])
    for path, reason in damaged:
        print(f"warning: unreadable result {path} ({reason}); listed in the reports, averaged nowhere",
              file=sys.stderr)
    reference = load_reference()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        plan_seeds, plan_datasets = seeds_and_datasets(output_root, name, flavour, seeds, datasets)
        plan = build_plan(name, flavour, plan_seeds, plan_datasets)
        belonging, foreign = split_foreign(plan, collected)
        warn_foreign(plan.name, foreign)
        results, superseded = split_superseded(belonging)  # after: a foreign result supersedes nothing
        rows = row_results(plan, results, reference)
        unreported = left_out(plan, results)
        if unreported:
            print(f"note: {plan.name}: {unreported}", file=sys.stderr)
        text = plan_report(plan, results, reference, figures_for(plan, rows, results, out), superseded,
                           damaged, unreported, foreign)
        path = out / f"{plan.name}.md"
        path.write_text(text)
        written.append(path)
    return written


def export_csv(output_root: Path, path: Path) -> Path:
    """Every completed run's result as one CSV row: stage key, seed, metrics, config hash, commit and
    the run directory relative to the output root (a compact, diffable record of a study)."""
    results = collect(output_root)
    if not results.empty:
        results = results.assign(run_dir=[os.path.relpath(d, output_root) for d in results.run_dir])
        columns = [c for c in ("experiment", "stage", "protocol", "seed") if c in results]
        columns += sorted(c for c in results if c.startswith("metric."))
        columns += [c for c in ("config_hash", "experiment_hash", "git_commit", "git_dirty", "run_dir") if c in results]
        results = results[columns].sort_values("experiment")
    path.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(path, index=False)
    return path


def sweep_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m reports sweep", description="a sweep's table and figures")
    parser.add_argument("name", help="the name `python -m slurm sweep` printed")
    parser.add_argument("--output-root", default="runs", type=Path, help="where the runs are")
    parser.add_argument("--out", default=Path("reports/out"), type=Path)
    arguments = parser.parse_args(argv)
    try:
        sweep = load_sweep(arguments.output_root, arguments.name)
        belonging, foreign = split_foreign(sweep_plan(sweep), collect(arguments.output_root))
        warn_foreign(f"sweep {sweep.name}", foreign)
        results, _ = split_superseded(belonging)
        print(f"wrote {sweep_report(sweep, results, arguments.out, foreign)}")
    except (InconsistentResults, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def tune_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m reports tune",
                                     description="the tuning's trials (tuning.csv) and each method's chosen point")
    parser.add_argument("--output-root", default="runs", type=Path, help="where the trials' runs are")
    parser.add_argument("--out", default=Path("reports/out"), type=Path, help="where tuning.csv and tuning.md go")
    parser.add_argument("--flavour", default="official")
    parser.add_argument("--seeds", default="", help="default: the seeds launched, else 0")
    parser.add_argument("--datasets", default="", help="the one scale reported (default: the one launched, else "
                                                       "fashion_mnist)")
    arguments = parser.parse_args(argv)
    try:
        seeds, datasets = seeds_and_datasets(
            arguments.output_root, "tune", arguments.flavour,
            parse_seeds(arguments.seeds) if arguments.seeds else (),
            parse_items(arguments.datasets, "--datasets", "dataset") if arguments.datasets else ())
        datasets = datasets or ("fashion_mnist",)
        if len(datasets) != 1 or datasets[0] not in SCALES:
            raise ValueError(f"one tuning report per scale: give --datasets with one of {', '.join(SCALES)} "
                             f"(got {', '.join(datasets)})")
        dataset = datasets[0]
        plan = build_plan("tune", arguments.flavour, seeds, datasets)
        belonging, foreign = split_foreign(plan, collect(arguments.output_root))
        warn_foreign(plan.name, foreign)
        results, _ = split_superseded(belonging)
        paths = write_tuning_report(plan, tuning_trials(dataset, arguments.flavour, seeds), results, arguments.out,
                                    TUNED_METHODS, schedule_for(dataset), f"Fashion-MNIST {SCALES[dataset]}", seeds,
                                    arguments.flavour)
    except (InconsistentResults, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in paths:
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:
        sweep_main(argv[1:])
        return
    if argv[:1] == ["tune"]:
        tune_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m reports")
    parser.add_argument("plans", nargs="*", help=f"default: all of {', '.join(PLANS)}")
    parser.add_argument("--output-root", default="runs", type=Path, help="where the runs are")
    parser.add_argument("--out", default=Path("reports/out"), type=Path)
    parser.add_argument("--flavour", default="official")
    parser.add_argument("--seeds", help="comma-separated; default: the seeds launched for each plan, else 0")
    parser.add_argument("--datasets", help="comma-separated; default: the datasets launched for each plan")
    parser.add_argument("--csv", type=Path, help="also write every collected result (one row per run) to this CSV")
    arguments = parser.parse_args(argv)
    names = [ALIASES.get(n, n) for n in arguments.plans] or [n for n in PLANS if n not in ("demo", "smoke",
                                                                                             *PLANS_OF_THEIR_OWN)]
    if set(names) & set(PLANS_OF_THEIR_OWN):
        parser.error("the tuning's report is written on its own: python -m reports tune [--datasets ...]")
    try:  # the launcher's parsers: the same seeds and datasets are refused or accepted on both sides
        seeds = parse_seeds(arguments.seeds) if arguments.seeds is not None else ()
        datasets = parse_items(arguments.datasets, "--datasets", "dataset") if arguments.datasets is not None else ()
        for path in write_reports(names, arguments.output_root, arguments.out, arguments.flavour, seeds, datasets):
            print(f"wrote {path}")
        if arguments.csv:
            print(f"wrote {export_csv(arguments.output_root, arguments.csv)}")
    except (InconsistentResults, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
