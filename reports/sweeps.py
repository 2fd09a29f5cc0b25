"""A sweep's report: one table row per grid point (the swept keys as columns, then each evaluation's
headline metric as mean ± std over seeds, with n), and one figure per swept key (the metric against
that key's values, one line per combination of the other keys)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from plans.registry import headline  # noqa: E402
from plans.sweeps import Sweep, point_label, sweep_plan  # noqa: E402
from reports.belonging import foreign_lines  # noqa: E402
from reports.tables import RowResult, _number, row_results  # noqa: E402


def _cell(result: RowResult | None) -> str:
    if result is None or result.mean is None:
        return "not run"
    spread = f" ± {_number(result.std, scale=result.mean)}" if len(result.seeds) > 1 else ""
    return f"{_number(result.mean)}{spread} (n={len(result.seeds)})"


def _as_number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def sweep_figure(sweep: Sweep, key: str, results: dict[tuple[str, str], RowResult], path: Path) -> Path | None:
    """The headline metric of each evaluation against `key`, one line per setting of the other keys."""
    protocols = [protocol for protocol, _ in sweep.protocols()]
    others = [k for k in sweep.keys if k != key]
    figure, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 3.8), squeeze=False)
    drawn = False
    for axis, protocol in zip(axes[0], protocols):
        groups: dict[str, list[tuple[float | str, RowResult]]] = {}
        for point in sweep.points():
            found = results.get((point_label(point), protocol))
            if found is None or found.mean is None:
                continue
            group = ", ".join(f"{k}={point[k]}" for k in others)
            groups.setdefault(group, []).append((_as_number(point[key]), found))
        for group, points in sorted(groups.items()):
            numeric = all(isinstance(x, float) for x, _ in points)
            points.sort(key=lambda item: item[0] if numeric else str(item[0]))
            xs = [x if numeric else str(x) for x, _ in points]
            axis.errorbar(xs, [r.mean for _, r in points], yerr=[r.std or 0.0 for _, r in points], marker="o",
                          capsize=3, label=group or None)
            drawn = True
        metric, meaning = headline(protocol)
        axis.set_title(f"{protocol} ({meaning})")
        axis.set_xlabel(key)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if others and groups:
            axis.legend(fontsize=7)
    if not drawn:
        plt.close(figure)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def sweep_report(sweep: Sweep, results: pd.DataFrame, out: Path, foreign: list[tuple[str, str]] = ()) -> Path:
    """Write `<out>/sweep-<name>.md` and its figures; returns the markdown's path. `foreign`: results
    left out for another dataset, method or preset than their point's (reports/belonging.split_foreign)."""
    plan = sweep_plan(sweep)
    by_row = {(r.row.method, r.row.protocol): r for r in row_results(plan, results, pd.DataFrame(
        columns=["table", "method", "backbone", "epochs", "dataset", "protocol", "value", "note"]))}
    protocols = [protocol for protocol, _ in sweep.protocols()]
    header = [*sweep.keys, *(f"{p}: {headline(p)[1]}" for p in protocols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in sweep.points():
        cells = [point[key] for key in sweep.keys]
        cells += [_cell(by_row.get((point_label(point), protocol))) for protocol in protocols]
        lines.append("| " + " | ".join(cells) + " |")
    done = sum(r.mean is not None for r in by_row.values())
    parts = [f"# {plan.name}", "", plan.description + ".", "",
             f"{done} of {len(by_row)} point evaluations have results. Mean ± sample std over the seeds that "
             f"finished (n); pretraining preset `{sweep.preset}`, evaluations "
             + ", ".join(f"{p} (`{preset}`)" for p, preset in sweep.protocols()) + ".", "", *lines]
    notes = [f"- {r.row.method} {r.row.protocol}: {note}" for r in by_row.values() for note in r.notes]
    if notes:
        parts += ["", "Notes:", "", *notes]
    parts += foreign_lines(foreign)
    for key in sweep.keys:
        name = f"sweep-{sweep.name}-{key}.png"
        if sweep_figure(sweep, key, by_row, out / name):
            parts += ["", f"![{key}]({name})"]
    path = out / f"sweep-{sweep.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
    return path
