"""Matplotlib figures (PNG) for the reports: ours against the paper where the paper has numbers."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reports.tables import RowResult  # noqa: E402

# Colours kept from figure to figure for the paper's protocols; any other gets the next free one.
PROTOCOL_COLOURS = {"finetune": "tab:green", "linear": "tab:blue", "knn": "tab:orange"}
SPARE_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")


def protocol_colours(rows: list[RowResult]) -> dict[str, str]:
    """{protocol: colour} for the protocols the rows report, the paper's three first."""
    present = sorted({r.row.protocol for r in rows}, key=lambda p: (p not in PROTOCOL_COLOURS, p))
    spare = iter(SPARE_COLOURS * len(present))
    return {p: PROTOCOL_COLOURS.get(p) or next(spare) for p in present}


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
        for protocol, colour in protocol_colours(rows).items():
            for group in sorted({group_of(r) for r in rows}):
                points = _series(rows, x_of, dataset, protocol, lambda r: group_of(r) == group)
                if not points:
                    continue
                label = f"{protocol} {group}".strip()
                ours = [(x, r.mean, r.std or 0.0) for x, r in points if r.mean is not None]
                paper = [(x, r.paper) for x, r in points if r.paper is not None]
                marker = "o" if not group or group == sorted({group_of(r) for r in rows})[0] else "s"
                if ours:
                    xs, means, stds = zip(*ours)
                    axis.errorbar(xs, means, yerr=stds, marker=marker, color=colour, capsize=3, label=f"{label} (ours)")
                if paper:
                    axis.plot(*zip(*paper), marker=marker, color=colour, linestyle="--", alpha=0.6,
                              label=f"{label} (paper)")
        axis.set_title(f"{title}: {dataset}")
        axis.set_xlabel(x_label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("top-1 accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)


# Characters per line of a bar group's label: about the width of its group (1.4 inches at 8 points), so that
# long names ("<method>: random init (no pretraining)") do not run into their neighbours'.
LABEL_WIDTH = 20


def _wrapped(label: str) -> str:
    """Each line of `label` broken at spaces into lines of at most LABEL_WIDTH characters (a longer word
    stays whole)."""
    return "\n".join(textwrap.fill(line, LABEL_WIDTH, break_long_words=False) for line in label.split("\n"))


def plot_bars(rows: list[RowResult], title: str, path: Path) -> Path:
    """One group of bars per method and dataset, one bar per protocol (ours, with the std over
    seeds); the paper's value as a black tick on the same bar where the paper has one."""
    groups = list(dict.fromkeys(f"{r.row.method}\n{r.row.backbone} {r.row.dataset}" for r in rows))
    protocols = list(dict.fromkeys(r.row.protocol for r in rows))
    width = 0.8 / len(protocols)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4.5))
    values = []
    for index, protocol in enumerate(protocols):
        for position, group in enumerate(groups):
            match = [r for r in rows if r.row.protocol == protocol
                     and f"{r.row.method}\n{r.row.backbone} {r.row.dataset}" == group]
            if not match or match[0].mean is None:
                continue
            result, x = match[0], position - 0.4 + width * (index + 0.5)
            axis.bar(x, result.mean, width=width * 0.9, yerr=result.std or 0.0, capsize=3,
                     color=protocol_colours(rows)[protocol], label=protocol if position == 0 else None)
            axis.text(x, result.mean + 0.3, f"{result.mean:.1f}", ha="center", va="bottom", fontsize=7)
            values.append(result.mean)
            if result.paper is not None:
                axis.plot([x - width * 0.45, x + width * 0.45], [result.paper] * 2, color="black", linewidth=2,
                          label="paper" if not any(t.get_label() == "paper" for t in axis.lines) else None)
                values.append(result.paper)
    if values:  # zoom on the differences: accuracies of one table sit within a few points
        axis.set_ylim(max(0.0, min(values) - 8), min(100.0, max(values) + 4))
    axis.set_xticks(range(len(groups)), [_wrapped(group) for group in groups], fontsize=8)
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_title(title, fontsize=10)
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_loss_curves(results: pd.DataFrame, experiments: dict[str, str], path: Path) -> Path | None:
    """Pretraining loss against step for the given {experiment key: label} (from result.json)."""
    if results.empty or "loss_curve" not in results:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    plotted = False
    for key, label in experiments.items():
        match = results[(results.get("experiment") == key) & results.loss_curve.notna()]
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
    axis.set_title("Pretraining loss (its terms change with m: compare shapes)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def plot_similarity(results: pd.DataFrame, experiments: dict[str, str], path: Path) -> Path | None:
    """Figure 4: per method, the class-similarity profile (own class, then the most similar other
    classes) and the histograms of same-class and other-class pair similarities."""
    if results.empty or "similarity_profile" not in results:
        return None
    figure, (profile_axis, histogram_axis) = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for (key, label), colour in zip(experiments.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        match = results[(results.get("experiment") == key) & results.similarity_profile.notna()]
        if match.empty:
            continue
        record = match.iloc[0]
        profile = record.similarity_profile
        profile_axis.plot(range(len(profile)), profile, marker="o", color=colour, label=label)
        edges = record.similarity_histogram_edges
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        histogram_axis.plot(centres, record.similarity_histogram_same, color=colour, label=f"{label}: same class")
        histogram_axis.plot(centres, record.similarity_histogram_other, color=colour, linestyle="--",
                            label=f"{label}: other classes")
        plotted = True
    if not plotted:
        plt.close(figure)
        return None
    profile_axis.set_xticks(range(len(profile)), ["own"] + [str(i) for i in range(1, len(profile))])
    profile_axis.set_xlabel("class (own, then other classes by similarity)")
    profile_axis.set_ylabel("mean cosine similarity to the class")
    profile_axis.set_title("Similarity to the query's class and related classes", fontsize=10)
    histogram_axis.set_xlabel("cosine similarity of query and training image")
    histogram_axis.set_ylabel("density")
    histogram_axis.set_title("Pair similarities", fontsize=10)
    for axis in (profile_axis, histogram_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)
