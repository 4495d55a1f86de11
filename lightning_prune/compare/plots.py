"""The comparison's figures (matplotlib, Agg canvas): drawn from ``results.csv``, ``curves.csv`` and the summary."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lightning_prune.compare.results import Summary
from lightning_prune.compare.stats import METRIC_BY_NAME
from lightning_prune.compare.status import RunStatus

MARKERS = ("o", "s", "^", "D", "v", "P")
LINESTYLES = ("-", "--", "-.", ":")


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: no pyplot, no GUI backend, safe in any process
    return figure


def plot_accuracy_vs_sparsity(results: pd.DataFrame) -> Figure:
    """Test accuracy against final sparsity, one point per run, one marker per arm."""
    figure = _figure(6.5, 4.5)
    axes = figure.add_subplot()
    finished = results[results["status"] == RunStatus.FINISHED]
    for index, (arm, rows) in enumerate(finished.groupby("arm", sort=False)):
        axes.scatter(rows["sparsity"] * 100, rows["test_acc"] * 100, marker=MARKERS[index % len(MARKERS)], s=50,
                     label=f"{arm} ({len(rows)} runs)", alpha=0.8)  # fmt: skip
    axes.set(title="Test accuracy vs final sparsity (one point per run)",
             xlabel="final sparsity of prunable weights (%)", ylabel="test accuracy (%)")  # fmt: skip
    _legend(axes)
    axes.grid(alpha=0.3)
    return figure


def _legend(axes: Any) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes.transAxes)


def _curve_panel(axes: Any, curves: pd.DataFrame, column: str, scale: float = 1.0) -> None:
    """Every run thin, each arm's mean over seeds thick, same colour per arm."""
    for index, (arm, rows) in enumerate(curves.groupby("arm", sort=False)):
        rows = rows.dropna(subset=[column])
        if rows.empty:
            continue
        color = f"C{index}"
        for _, run in rows.groupby("seed"):
            axes.plot(run["epoch"], run[column] * scale, color=color, alpha=0.25, linewidth=1)
        mean = rows.groupby("epoch")[column].mean() * scale
        # distinct line styles too: arms that prune to the same schedule draw the same curve
        axes.plot(mean.index, mean.values, color=color, linewidth=2.2, marker=MARKERS[index % len(MARKERS)],
                  linestyle=LINESTYLES[index % len(LINESTYLES)], label=f"{arm} (mean of seeds)")  # fmt: skip
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    _legend(axes)


def plot_sparsity_and_ratio(curves: pd.DataFrame) -> Figure:
    """Sparsity per epoch for every arm, and the adaptive ratio per epoch for the arms that have one."""
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    _curve_panel(left, curves, "sparsity", 100)
    left.set(title="Sparsity at the end of each epoch", xlabel="epoch", ylabel="sparsity of prunable weights (%)")
    _curve_panel(right, curves, "ratio", 100)
    right.set(title="Pruning ratio chosen each epoch (adaptive arm)", xlabel="epoch",
              ylabel="ratio (% of remaining weights)")  # fmt: skip
    return figure


def plot_losses(curves: pd.DataFrame) -> Figure:
    """Train loss, validation loss and validation accuracy per epoch, every arm."""
    figure = _figure(15, 4.2)
    panels = figure.subplots(1, 3)
    for axes, (column, title, label, scale) in zip(panels, [
        ("train_loss", "Training loss (epoch mean)", "cross-entropy loss", 1.0),
        ("val_loss", "Validation loss", "cross-entropy loss", 1.0),
        ("val_acc", "Validation accuracy", "accuracy (%)", 100.0),
    ], strict=True):  # fmt: skip
        _curve_panel(axes, curves, column, scale)
        axes.set(title=title, xlabel="epoch", ylabel=label)
    return figure


def plot_flops_latency(summary: Summary) -> Figure:
    """Bars per arm: effective (and dense) FLOPs per sample, latency per test batch; whiskers are 95% t-CIs."""
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    arms = [arm for arm in summary.arms if summary.mean(arm, "flops_effective") is not None]
    x = np.arange(len(arms))
    for axes, names, title, label in (
        (left, ("flops_dense", "flops_effective"), "Compute per sample", "MFLOPs per sample (1 MAC = 1 FLOP)"),
        (right, ("latency_ms_per_batch",), "Latency per test batch (CPU, pinned threads)", "milliseconds per batch"),
    ):
        width = 0.8 / len(names)
        for offset, name in enumerate(names):
            metric = METRIC_BY_NAME[name]
            described = [summary.per_arm[arm][name] for arm in arms]
            means = np.array([np.nan if d.mean is None else d.mean * metric.scale for d in described])
            errors = np.array([d.t_half_width * metric.scale if d.t_ci else 0.0 for d in described])
            axes.bar(x + (offset - (len(names) - 1) / 2) * width, means, width, yerr=errors, capsize=4,
                     label=metric.label, hatch="//" if name == "flops_dense" else None, alpha=0.85)  # fmt: skip
        axes.set_xticks(x, arms)
        axes.set(title=title, xlabel="arm", ylabel=label)
        axes.grid(axis="y", alpha=0.3)
        _legend(axes)
    return figure


def _pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (no more cost and no less accuracy, one strictly better), by
    cost.

    Example:
        >>> _pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.94), (0.5, 0.5)])
        [3, 0, 1]
    """
    front = [
        i for i, (cost, acc) in enumerate(points)
        if not any(c <= cost and a >= acc and (c < cost or a > acc) for c, a in points)
    ]  # fmt: skip
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(summary: Summary) -> Figure:
    """Test accuracy against effective FLOPs and against non-zero parameters, one point per arm (mean over its seeds)
    with its 95% t-CI as whiskers on both axes (none with one seed or a value that is the same in every run), and the
    Pareto front of the arms' means."""
    figure = _figure(11, 4.5)
    panels = figure.subplots(1, 2)
    accuracy = METRIC_BY_NAME["test_acc"]
    for axes, name in zip(panels, ("flops_effective", "params_nonzero"), strict=True):
        metric = METRIC_BY_NAME[name]
        points, arms = [], []
        for index, arm in enumerate(summary.arms):
            x, y = summary.stats(arm, name), summary.stats(arm, "test_acc")
            if x is None or y is None or x.mean is None or y.mean is None:
                continue
            xerr = (x.t_half_width or 0.0) * metric.scale
            yerr = (y.t_half_width or 0.0) * accuracy.scale
            axes.errorbar(x.mean * metric.scale, y.mean * accuracy.scale, xerr=xerr, yerr=yerr, capsize=4,
                          marker=MARKERS[index % len(MARKERS)], color=f"C{index}", linestyle="none",
                          label=f"{arm} (n={y.n})")  # fmt: skip
            points.append((x.mean * metric.scale, y.mean * accuracy.scale))
            arms.append(arm)
        front = _pareto_front(points)
        if len(front) > 1:
            axes.plot([points[i][0] for i in front], [points[i][1] for i in front], color="grey", linestyle=":",
                      linewidth=1, label="Pareto front of the means")  # fmt: skip
        axes.set(title=f"Test accuracy vs {metric.label}", xlabel=metric.title, ylabel="test accuracy (%), 95% t-CI")
        axes.grid(alpha=0.3)
        _legend(axes)
    return figure


PLOTS = {
    "accuracy_vs_sparsity.png": lambda results, curves, summary: plot_accuracy_vs_sparsity(results),
    "sparsity_ratio_per_epoch.png": lambda results, curves, summary: plot_sparsity_and_ratio(curves),
    "loss_curves.png": lambda results, curves, summary: plot_losses(curves),
    "flops_latency.png": lambda results, curves, summary: plot_flops_latency(summary),
    "pareto.png": lambda results, curves, summary: plot_pareto(summary),
}


def write_plots(output: Path, results: pd.DataFrame, curves: pd.DataFrame, summary: Summary) -> list[Path]:
    """Every figure of ``PLOTS`` as a PNG in ``output``."""
    paths = []
    for name, draw in PLOTS.items():
        path = output / name
        draw(results, curves, summary).savefig(path, dpi=120)
        paths.append(path)
    return paths
