"""Matplotlib figures (PNG) for the reports: ours against the paper where the paper has numbers."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.tables import RowResult  # noqa: E402

PROTOCOL_COLOURS = {"finetune": "tab:green", "linear": "tab:blue", "knn": "tab:orange"}


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _series(rows: list[RowResult], x_of, dataset: str, protocol: str, extra=lambda r: True):
    points = sorted((x_of(r), r) for r in rows if r.row.dataset == dataset and r.row.protocol == protocol and extra(r))
    return points


def plot_against(rows: list[RowResult], x_of, x_label: str, title: str, path: Path, group_of=lambda r: "") -> Path:
    """One panel per dataset; per protocol (and group) our points (solid) and the paper's (dashed)."""
    datasets = sorted({r.row.dataset for r in rows})
    figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for protocol, colour in PROTOCOL_COLOURS.items():
            for group in sorted({group_of(r) for r in rows}):
                points = _series(rows, x_of, dataset, protocol, lambda r: group_of(r) == group)
                if not points:
                    continue
                label = f"{protocol} {group}".strip()
                ours = [(x, r.mean) for x, r in points if r.mean is not None]
                paper = [(x, r.paper) for x, r in points if r.paper is not None]
                marker = "o" if not group or group == sorted({group_of(r) for r in rows})[0] else "s"
                if ours:
                    axis.plot(*zip(*ours), marker=marker, color=colour, label=f"{label} (ours)")
                if paper:
                    axis.plot(*zip(*paper), marker=marker, color=colour, linestyle="--", alpha=0.6,
                              label=f"{label} (paper)")
        axis.set_title(f"{title}: {dataset}")
        axis.set_xlabel(x_label)
        axis.set_ylabel("top-1 accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_bars(rows: list[RowResult], title: str, path: Path) -> Path:
    """Grouped bars: every row's result (ours) and the paper's value beside it."""
    labels = [f"{r.row.method}\n{r.row.dataset} {r.row.protocol}" for r in rows]
    positions = range(len(rows))
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    axis.bar([p - 0.2 for p in positions], [r.mean or 0 for r in rows], width=0.4, label="ours",
             yerr=[r.std or 0 for r in rows], capsize=3)
    if any(r.paper is not None for r in rows):
        axis.bar([p + 0.2 for p in positions], [r.paper or 0 for r in rows], width=0.4, label="paper", alpha=0.6)
    for p, r in zip(positions, rows):
        if r.mean is not None:
            axis.text(p - 0.2, r.mean + 0.5, f"{r.mean:.1f}", ha="center", fontsize=7)
    axis.set_xticks(list(positions), labels, rotation=45, ha="right", fontsize=7)
    axis.set_ylabel("accuracy (%)")
    axis.set_title(title)
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_loss_curves(results: pd.DataFrame, experiments: dict[str, str], path: Path) -> Path | None:
    """Pretraining loss against step for the given {experiment key: label} (from result.json)."""
    if results.empty or "loss_curve" not in results:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    plotted = False
    for key, label in experiments.items():
        match = results[(results.get("experiment") == key) & (results.stage == "pretrain")]
        if match.empty or not isinstance(match.iloc[0].loss_curve, list) or not match.iloc[0].loss_curve:
            continue
        steps, losses = zip(*match.iloc[0].loss_curve)
        axis.plot(steps, losses, label=label)
        plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_xlabel("step")
    axis.set_ylabel("pretraining loss")
    axis.set_title("Pretraining loss (the terms differ with m: compare shapes, not levels)")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)
