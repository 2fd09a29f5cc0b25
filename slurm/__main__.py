"""`python -m slurm run PLAN ...`, `python -m slurm sweep ...`, `python -m slurm status`, `python -m slurm plans`.

    python -m slurm run table6 --executor slurm --datasets cifar100 --cluster partition=gpu account=lab --dry-run
    python -m slurm run demo --executor inline
    python -m slurm sweep --preset debug_cpu --grid loss.temperature=0.1,0.2 mix.num_mixed=2,3 --seeds 0,1 \
        --evals knn,linear:fast
    python -m slurm status
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import RUN_FAILURES, error_message, exit_status, parse_items, parse_positive_number, parse_seeds, parse_whole_number
from plans.launches import read_launches, record_launch
from plans.sweeps import (Sweep, check_grid, default_name, merged_sweep, parse_evals, parse_grid, save_sweep,
                          sweep_plan)
from plans.tables import ALIASES, PLANS, build_plan
from slurm.executors import load_cluster_config, resolve_executor
from slurm.graph import launch
from slurm.status import print_status


def _launch_options(command: argparse.ArgumentParser) -> None:
    """Where and how a plan's or a sweep's jobs run."""
    command.add_argument("--executor", default="auto", help="auto | slurm | local | inline")
    command.add_argument("--dry-run", action="store_true",
                         help="print the jobs that would be submitted (or refuse, as the launch would)")
    command.add_argument("--output-root", default="runs", type=Path)
    command.add_argument("--profile", help="cluster profile YAML (partition, account, qos, ...)")
    command.add_argument("--cluster", nargs="*", default=[], metavar="key=value",
                         help="cluster settings, e.g. partition=gpu")
    command.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for pretraining stages")
    command.add_argument("--eval-set", nargs="*", default=[], metavar="key=value", help="overrides for evaluations")
    command.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default 0)")
    command.add_argument("--jobs", default="1",
                         help="inline executor: run up to N stages at a time, in N worker processes")


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(prog="python -m slurm")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run or submit a plan's stages that are not complete")
    run.add_argument("plan", choices=[*PLANS, *ALIASES])
    run.add_argument("--flavour", default="official", help="paper | official presets")
    run.add_argument("--datasets", help="comma-separated subset, e.g. cifar100 (default: the plan's)")
    _launch_options(run)
    sweep = commands.add_parser("sweep", help="run or submit a grid of pretraining overrides x seeds, with evaluations")
    sweep.add_argument("--preset", required=True, help="the pretraining preset of every point")
    sweep.add_argument("--grid", nargs="+", required=True, metavar="key=v1,v2", help="e.g. loss.temperature=0.1,0.2")
    sweep.add_argument("--evals", default="knn", help="protocols of each point, e.g. knn,linear or linear:fast")
    sweep.add_argument("--name", default="", help="the sweep's name (default: preset-key1+key2)")
    sweep.add_argument("--nodes", default="1", help="nodes per job")
    sweep.add_argument("--gpus-per-node", default="1")
    sweep.add_argument("--hours", default="24", help="time limit of each pretraining job")
    _launch_options(sweep)
    stat = commands.add_parser("status", help="list run directories and submitted jobs")
    stat.add_argument("--output-root", default="runs", type=Path)
    commands.add_parser("plans", help="list the plans")
    arguments = parser.parse_args(argv)

    if arguments.command == "plans":
        for name in [*PLANS, *ALIASES]:
            plan = build_plan(name)
            print(f"{name:22} {len(plan.stages):3} stages  {plan.description}")
        return
    if arguments.command == "status":
        print_status(arguments.output_root)
        return
    try:
        # Parsed here rather than by argparse: a bad value is one `error:` line, like every other refusal.
        seeds = parse_seeds(arguments.seeds) if arguments.seeds is not None else (0,)
        jobs = parse_whole_number(arguments.jobs, "--jobs", "the number of jobs", minimum=1)
        executor = resolve_executor(arguments.executor)
        cluster = load_cluster_config(arguments.profile, arguments.cluster)
        # What is kept of a launch is written once every check has passed (launch's on_accepted), so
        # that a refused launch leaves no definition or seeds behind; whether it can be kept is checked
        # with the launch's own refusals (launch's check), so that a dry run refuses it too.
        if arguments.command == "sweep":
            definition = _sweep_definition(arguments, seeds)
            plan = sweep_plan(definition)

            def check() -> None:  # the name kept with another preset or other keys, or a damaged file
                merged_sweep(arguments.output_root, definition)

            def accepted() -> None:  # the report rebuilds the sweep from this file
                save_sweep(arguments.output_root, definition)
        else:
            datasets = () if arguments.datasets is None else parse_items(arguments.datasets, "--datasets", "dataset")
            plan = build_plan(arguments.plan, arguments.flavour, seeds, datasets)

            def check() -> None:  # a damaged launch record: adding to it would guess
                read_launches(arguments.output_root, plan.name)

            def accepted() -> None:  # `make report` reports what was launched without being told again
                record_launch(arguments.output_root, plan.name, arguments.flavour, seeds, datasets)
        outcome = launch(plan, executor, arguments.output_root, cluster, arguments.dry_run, arguments.set,
                         arguments.eval_set, on_accepted=accepted, jobs=jobs, check=check)
    except RUN_FAILURES as error:  # a bad plan or setting, a stage run inline that failed, a busy plan
        print(f"error: {error_message(error)}", file=sys.stderr)
        raise SystemExit(exit_status(error)) from None
    counts: dict[str, int] = {}
    for what in outcome.values():
        category = what if what in ("complete", "ran", "would submit") else " ".join(what.split()[:2 if what.startswith(("queued", "not")) else 1])
        counts[category] = counts.get(category, 0) + 1
    print(f"[{plan.name}] " + ", ".join(f"{n} {w}" for w, n in counts.items()))
    if arguments.command == "sweep" and not arguments.dry_run:
        print(f"report: python -m reports sweep {definition.name} --output-root {arguments.output_root}")


def _sweep_definition(arguments: argparse.Namespace, seeds: tuple[int, ...]) -> Sweep:
    """The sweep the options describe, every option checked (ConfigError or ValueError naming it)."""
    grid = check_grid(arguments.preset, parse_grid(arguments.grid))
    return Sweep(arguments.name or default_name(arguments.preset, grid), arguments.preset, grid, seeds,
                 parse_evals(arguments.evals),
                 parse_whole_number(arguments.nodes, "--nodes", "the number of nodes", minimum=1),
                 parse_whole_number(arguments.gpus_per_node, "--gpus-per-node", "the number of GPUs"),
                 parse_positive_number(arguments.hours, "--hours"))


if __name__ == "__main__":
    main()
