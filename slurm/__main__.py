"""`python -m slurm run PLAN ...`, `python -m slurm status`, `python -m slurm plans`.

    python -m slurm run table6 --executor slurm --datasets cifar100 --cluster partition=gpu --dry-run
    python -m slurm run demo --executor inline
    python -m slurm status
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import RUN_FAILURES, exit_status
from plans.tables import ALIASES, PLANS, build_plan
from slurm.executors import load_cluster_config, resolve_executor
from slurm.graph import launch
from slurm.status import print_status


def _list(text: str) -> list[str]:
    return [item for item in text.replace(",", " ").split() if item]


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(prog="python -m slurm")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run or submit a plan's stages that are not complete")
    run.add_argument("plan", choices=[*PLANS, *ALIASES])
    run.add_argument("--executor", default="auto", help="auto | slurm | local | inline")
    run.add_argument("--dry-run", action="store_true", help="print the jobs that would be submitted")
    run.add_argument("--flavour", default="official", help="paper | official presets")
    run.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--datasets", default="", help="comma-separated subset, e.g. cifar100")
    run.add_argument("--output-root", default="runs", type=Path)
    run.add_argument("--profile", help="cluster profile YAML (partition, account, qos, ...)")
    run.add_argument("--cluster", nargs="*", default=[], metavar="key=value", help="cluster settings, e.g. partition=gpu")
    run.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for pretraining stages")
    run.add_argument("--eval-set", nargs="*", default=[], metavar="key=value", help="overrides for evaluations")
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
        plan = build_plan(arguments.plan, arguments.flavour, tuple(int(s) for s in _list(arguments.seeds)),
                          tuple(_list(arguments.datasets)))
        executor = resolve_executor(arguments.executor)
        cluster = load_cluster_config(arguments.profile, arguments.cluster)
        outcome = launch(plan, executor, arguments.output_root, cluster, arguments.dry_run, arguments.set,
                         arguments.eval_set)
    except RUN_FAILURES as error:  # a bad plan or setting, a stage run inline that failed, a busy plan
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(exit_status(error)) from None
    counts: dict[str, int] = {}
    for what in outcome.values():
        category = what if what in ("complete", "ran", "would submit") else " ".join(what.split()[:2 if what.startswith(("queued", "not")) else 1])
        counts[category] = counts.get(category, 0) + 1
    print(f"[{plan.name}] " + ", ".join(f"{n} {w}" for w, n in counts.items()))


if __name__ == "__main__":
    main()
