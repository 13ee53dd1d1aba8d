"""Report figures as PNG files, drawn with matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from kdtemp.store.files import atomic_write_bytes
from kdtemp.store.records import BASELINE, TEACHER


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _temperature_axis(axis, temperatures: list[float]) -> None:
    axis.set_xscale("log")
    if temperatures:
        axis.set_xticks(temperatures)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())


def accuracy_vs_temperature(summary: pd.DataFrame, name: str, path: Path) -> Path:
    """Mean test accuracy against t0 (log x), a line per schedule with 95% CI bars, baseline and teacher as
    lines."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axis = figure.add_subplot()
    grid = summary[~summary["schedule"].isin([BASELINE, TEACHER]) & (summary["n"] > 0)]
    alphas = grid["alpha"].nunique()
    temperatures = sorted(grid["t0"].dropna().unique().tolist())
    series = list(grid.groupby(["schedule", "alpha"], sort=True))
    for index, ((schedule, alpha), part) in enumerate(series):
        part = part.sort_values("t0")
        label = schedule if alphas == 1 else f"{schedule} (alpha {alpha:g})"
        errors = 100 * part["ci95_test_acc"].fillna(0)
        axis.errorbar(
            part["t0"] * dodge_factor(index, len(series)),
            100 * part["mean_test_acc"],
            yerr=errors,
            marker="o",
            capsize=3,
            label=label,
        )
    baseline = summary[summary["schedule"] == BASELINE]
    for _, row in baseline.iterrows():
        mean = 100 * row["mean_test_acc"]
        axis.axhline(mean, color="0.35", linestyle="--", label=f"no-KD baseline ({mean:.1f}%)")
        if not math.isnan(row["ci95_test_acc"]):
            axis.axhspan(
                mean - 100 * row["ci95_test_acc"],
                mean + 100 * row["ci95_test_acc"],
                color="0.35",
                alpha=0.12,
                label="no-KD baseline, 95% CI",
            )
    teacher = summary[summary["schedule"] == TEACHER]
    if len(teacher) and not pd.isna(teacher["mean_test_acc"].iloc[0]):
        accuracy = 100 * teacher["mean_test_acc"].iloc[0]
        axis.axhline(accuracy, color="black", linestyle=":", label=f"teacher ({accuracy:.1f}%)")
    _temperature_axis(axis, temperatures)
    axis.set_xlabel("initial temperature t0 (log scale)")
    axis.set_ylabel("test accuracy (%), last epoch")
    axis.set_title(f"{name}: test accuracy vs temperature (mean ± 95% CI over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return _save(figure, path)


def dodge_factor(index: int, count: int, step: float = 0.04) -> float:
    """Multiplier that shifts series `index` of `count` sideways on a log-T axis (a constant distance in
    log T at every temperature), so error bars of several schedules at one T do not cover each other."""
    return math.exp(step * (index - (count - 1) / 2))


def _panels(count: int, width: float = 4.2, height: float = 3.2, share_y: bool = False):
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows + 0.6), layout="constrained")
    axes = [figure.add_subplot(rows, columns, 1)]
    for i in range(1, count):
        axes.append(figure.add_subplot(rows, columns, i + 1, sharey=axes[0] if share_y else None))
    return figure, axes


def _decorate(axis, title: str, xlabel: str, ylabel: str) -> None:
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def learning_curves(curves: pd.DataFrame, name: str, path: Path) -> Path:
    """Test accuracy against epoch: a panel per schedule, a line per t0 (mean over seeds, shaded sd), and the
    no-KD baseline in black, dashed, with markers."""
    schedules = sorted(s for s in curves["schedule"].unique() if s != BASELINE)
    figure, axes = _panels(max(len(schedules), 1), share_y=True)
    baseline = curves[curves["schedule"] == BASELINE].groupby("epoch")["test_acc"].mean()
    for axis, schedule in zip(axes, schedules, strict=False):
        part = curves[curves["schedule"] == schedule]
        for t0, runs in part.groupby("t0"):
            by_epoch = runs.groupby("epoch")["test_acc"]
            mean, sd = 100 * by_epoch.mean(), 100 * by_epoch.std(ddof=1).fillna(0)
            (line,) = axis.plot(mean.index, mean.values, label=f"t0={t0:g}")
            axis.fill_between(
                mean.index, (mean - sd).values, (mean + sd).values, color=line.get_color(), alpha=0.15
            )
        if len(baseline):  # black, dashed and marked: visible even where t0 = 1 lies on top of it
            axis.plot(
                baseline.index,
                100 * baseline.values,
                color="black",
                linestyle="--",
                marker="x",
                markersize=4,
                zorder=3,
                label="no KD",
            )
        _decorate(axis, schedule, "epoch", "test accuracy (%)")
    figure.suptitle(f"{name}: learning curves (mean ± sd over seeds)")
    return _save(figure, path)


def temperature_schedules(curves: pd.DataFrame, name: str, path: Path) -> Path:
    """The temperature each schedule used, epoch by epoch, as recorded in the runs' CSVs."""
    grid = curves[curves["schedule"] != BASELINE]
    schedules = sorted(grid["schedule"].unique())
    figure, axes = _panels(max(len(schedules), 1))
    for axis, schedule in zip(axes, schedules, strict=False):
        part = grid[grid["schedule"] == schedule]
        for t0, runs in part.groupby("t0"):
            by_epoch = runs.groupby("epoch")["temperature"]
            mean = by_epoch.mean()
            (line,) = axis.plot(mean.index, mean.values, marker=".", label=f"t0={t0:g}")
            low, high = by_epoch.min(), by_epoch.max()
            if (high - low).max() > 0:  # learnable temperatures differ between seeds
                axis.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.15)
            if "effective_temperature" in runs and runs["effective_temperature"].notna().any():
                effective = runs.groupby("epoch")["effective_temperature"].mean()
                axis.plot(
                    effective.index,
                    effective.values,
                    linestyle=":",
                    color=line.get_color(),
                    label=f"t0={t0:g}, mean effective",
                )
        _decorate(axis, schedule, "epoch", "temperature T")
    figure.suptitle(f"{name}: temperature schedules as trained")
    return _save(figure, path)


def entropy_vs_temperature(entropy: pd.DataFrame, num_classes: int, name: str, path: Path) -> Path:
    """How soft the teacher's targets are: mean entropy and mean top probability against T."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    temperatures = entropy["temperature"].tolist()
    left.plot(temperatures, entropy["mean_entropy"], marker="o")
    left.axhline(
        np.log(num_classes),
        color="0.35",
        linestyle="--",
        label=f"uniform: ln {num_classes} = {np.log(num_classes):.2f}",
    )
    left.set_ylabel("mean entropy of soft targets (nats)")
    right.plot(temperatures, 100 * entropy["mean_max_prob"], marker="o", color="tab:orange")
    right.axhline(100 / num_classes, color="0.35", linestyle="--", label=f"uniform: {100 / num_classes:.0f}%")
    right.set_ylabel("mean top-class probability (%)")
    for axis in (left, right):
        _temperature_axis(axis, temperatures)
        axis.set_xlabel("temperature T (log scale)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{name}: how soft the teacher's targets are")
    return _save(figure, path)


def temperature_alpha_heatmap(summary: pd.DataFrame, name: str, path: Path) -> Path:
    """Mean test accuracy (%) over t0 x alpha, one panel per schedule, the cell chosen on validation
    outlined: where T and alpha interact, a line per alpha hides it."""
    grid = summary[~summary["schedule"].isin([BASELINE, TEACHER]) & (summary["n"] > 0)]
    grid = grid[grid["generation"] == grid["generation"].min()]
    schedules = list(dict.fromkeys(grid["schedule"]))
    figure = Figure(figsize=(3.2 + 2.8 * len(schedules), 3.6), layout="constrained")
    axes = figure.subplots(1, len(schedules), squeeze=False)[0]
    low, high = 100 * grid["mean_test_acc"].min(), 100 * grid["mean_test_acc"].max()
    image = None
    for axis, schedule in zip(axes, schedules, strict=True):
        part = grid[grid["schedule"] == schedule]
        values = part.pivot_table(index="alpha", columns="t0", values="mean_test_acc", aggfunc="first") * 100
        image = axis.imshow(
            values.to_numpy(), cmap="viridis", vmin=low, vmax=high, aspect="auto", origin="lower"
        )
        axis.set_xticks(range(len(values.columns)), [f"{t:g}" for t in values.columns])
        axis.set_yticks(range(len(values.index)), [f"{a:g}" for a in values.index])
        for (row, column), value in np.ndenumerate(values.to_numpy()):
            if not math.isnan(value):
                light = value > (low + high) / 2  # viridis runs dark to light
                axis.text(
                    column,
                    row,
                    f"{value:.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if light else "white",
                )
        chosen = part[part["chosen"].fillna(False).astype(bool)] if "chosen" in part else part.iloc[:0]
        for cell in chosen.itertuples():
            row, column = list(values.index).index(cell.alpha), list(values.columns).index(cell.t0)
            axis.add_patch(_outline(column, row))
        axis.set_title(schedule)
        axis.set_xlabel("T (t0)")
        axis.set_ylabel("alpha (KD weight)")
    if image is not None:
        figure.colorbar(image, ax=list(axes), label="test accuracy (%)")
    figure.suptitle(f"{name}: test accuracy over T x alpha (outlined: chosen on validation)")
    return _save(figure, path)


def _outline(column: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def search_curves(trials: list, name: str, path: Path) -> Path:
    """Each trial's mean validation accuracy per epoch (what the pruner saw), an x where it was pruned,
    completed trials drawn thick."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axis = figure.add_subplot()
    for trial in trials:
        if not trial.curve:
            continue
        epochs = list(range(1, len(trial.curve) + 1))
        values = [100 * v for v in trial.curve]
        complete = trial.state == "complete"
        label = f"{trial.schedule} T={trial.t0:.3g} a={trial.alpha:g}" if complete else None
        (line,) = axis.plot(
            epochs, values, linewidth=2.2 if complete else 0.9, alpha=1 if complete else 0.6, label=label
        )
        if trial.state == "pruned":
            axis.plot(epochs[-1], values[-1], "x", color=line.get_color())
    axis.set_xlabel("epoch")
    axis.set_ylabel("mean validation accuracy over seeds (%)")
    axis.set_title(f"{name}: trials of the search (x = pruned there)")
    axis.grid(alpha=0.3)
    if any(trial.state == "complete" for trial in trials):
        axis.legend(fontsize=8)
    return _save(figure, path)
