"""The accuracy-versus-temperature tables: a row per schedule, a cell per temperature, its markers.

A cell averages the completed runs of one setting (kdtemp.report.results sorts them from the failed,
unfinished and unreadable ones, which kdtemp.report.build lists). Headline numbers are last-epoch
values; the test accuracy at each run's best-validation epoch is labelled as such. The bold cell of a row
is chosen on validation accuracy, like the verdict's best cell (kdtemp.report.verdict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from kdtemp.errors import RunsError
from kdtemp.report import stats, verdict
from kdtemp.report.results import ExperimentResults
from kdtemp.report.summary import cells_matching
from kdtemp.store.records import BASELINE

METRICS = {
    # --metric name: (column in the per-run table, shown as percent, higher is better)
    "test_acc": ("test_acc", True, True),
    "val_acc": ("val_acc", True, True),
    "test_acc_at_best_val": ("test_acc_at_best_val", True, True),
    "test_loss": ("test_loss", False, False),
    "agreement": ("agreement", True, True),
    "kl_to_teacher": ("test_kl", False, False),
    "ece": ("test_ece", True, False),
}
RENAMED_METRICS = {
    "best_test_acc": (
        "best_test_acc chose each run's epoch on the test set it reported; use --metric test_acc_at_best_val "
        "(test accuracy at the epoch of best validation accuracy)"
    ),
}


# --- the accuracy-versus-temperature table ---------------------------------------------------


MARKERS = {"better": "*", "worse": "†"}
BASELINE_LABEL = "baseline (no KD)"


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    val_mean: float = math.nan
    """Mean validation accuracy: what the row's bold cell is chosen on."""
    p_value: float = math.nan
    """Against no-KD, paired over seeds and Holm-adjusted over the table."""
    best: bool = False
    marker: str = ""
    """MARKERS' `*` (better than no-KD) or `†` (worse), at adjusted p < 0.05."""


@dataclass
class TemperatureTable:
    """Rows = schedule (x alpha x generation), columns = t0, cells = mean, sd and n of one metric over
    seeds."""

    metric: str
    percent: bool
    temperatures: list[float]
    rows: dict[str, dict[float, Cell]]
    references: dict[str, Cell]
    """Baseline and teacher, shown beside the grid."""
    higher_better: bool = True
    chosen_on_val: bool = True
    """Whether the bold cells were chosen on validation accuracy (else on the table's own metric)."""
    pruned: dict[str, dict[float, int]] = field(default_factory=dict)
    """Row label -> t0 -> the epoch `kdtemp search` pruned that cell at (cells with no completed run)."""

    @property
    def legend(self) -> str:
        """What bold and the marks mean."""
        pruned = f"; {PRUNED}" if self.pruned else ""
        return f"{BOLD_ON_VAL if self.chosen_on_val else BOLD_ON_TEST}; {MARKS}{pruned}"

    @property
    def heading(self) -> str:
        """What a cell holds: `test_acc (%), mean ± sd (n seeds), last epoch`."""
        epoch = "each run's best-validation epoch" if self.metric == "test_acc_at_best_val" else "last epoch"
        return f"{self.metric}{' (%)' if self.percent else ''}, mean ± sd (n seeds), {epoch}"


MARKS = (
    "* / † = better / worse than the no-KD baseline: paired t-test over seeds, Holm-adjusted p < 0.05 over "
    "the table's cells"
)
PRUNED = "pruned @e = stopped by kdtemp search's pruner after epoch e, behind on validation"
BOLD_ON_VAL = "bold = the row's temperature of best validation accuracy"
BOLD_ON_TEST = "bold = the row's best temperature on this test set (no validation split)"


def check_metric(metric: str) -> None:
    if metric in RENAMED_METRICS:
        raise RunsError(f"--metric {metric}: {RENAMED_METRICS[metric]}")
    if metric not in METRICS:
        raise RunsError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def temperature_table(
    results: ExperimentResults, metric: str = "test_acc", tests: pd.DataFrame | None = None
) -> TemperatureTable:
    """`metric`'s table; `tests` (verdict.cell_tests on that metric) marks cells better or worse than
    no-KD."""
    check_metric(metric)
    column, percent, higher_better = METRICS[metric]
    final = results.final
    if final.empty or column not in final:
        return TemperatureTable(metric, percent, [], {}, _references(results, column), higher_better)
    tests = verdict.cell_tests(final, column, higher_better) if tests is None else tests
    grid = final[final["schedule"] != BASELINE]
    pruned_cells = {cell[:4]: cell[4] for cell in results.pruned.values()}
    temperatures = sorted(
        {float(t) for t in grid["t0"].dropna().unique()} | {float(c[2]) for c in pruned_cells}
    )
    alphas = sorted(set(grid["alpha"].unique()) | {c[1] for c in pruned_cells})
    rows: dict[str, dict[float, Cell]] = {}
    for (generation, schedule, alpha), part in grid.groupby(["generation", "schedule", "alpha"], sort=True):
        label = schedule if len(alphas) == 1 else f"{schedule} (alpha {alpha:g})"
        if results.generations:
            label += f", gen {generation}"
        cells = {
            float(t0): _table_cell(cell, column, tests, higher_better) for t0, cell in part.groupby("t0")
        }
        on_val = verdict.chosen_on_val(part)
        if on_val:
            best_t = max(cells, key=lambda t: cells[t].val_mean)
        else:
            best_t = (max if higher_better else min)(cells, key=lambda t: cells[t].mean)
        cells[best_t].best = True
        rows[label] = cells
    pruned: dict[str, dict[float, int]] = {}
    for (schedule, alpha, t0, generation), epoch in sorted(pruned_cells.items(), key=str):
        label = schedule if len(alphas) == 1 else f"{schedule} (alpha {alpha:g})"
        if results.generations:
            label += f", gen {generation}"
        if float(t0) not in rows.get(label, {}):
            pruned.setdefault(label, {})[float(t0)] = int(epoch or 0)
    return TemperatureTable(
        metric,
        percent,
        temperatures,
        rows,
        _references(results, column),
        higher_better,
        verdict.chosen_on_val(grid),
        pruned,
    )


def _table_cell(cell: pd.DataFrame, column: str, tests: pd.DataFrame, higher_better: bool) -> Cell:
    values = cell[column].dropna().tolist()
    result = Cell(stats.mean(values), stats.std(values), len(values))
    if verdict.SELECTION_COLUMN in cell:
        result.val_mean = stats.mean(cell[verdict.SELECTION_COLUMN].dropna().tolist())
    match = cells_matching(tests, cell.iloc[0])
    if len(match):
        result.p_value = float(match["holm_p_value"].iloc[0])
        result.marker = MARKERS.get(verdict.significant(match.iloc[0], higher_better), "")
    return result


def _references(results: ExperimentResults, column: str) -> dict[str, Cell]:
    references = {}
    final = results.final
    if not final.empty and column in final:
        base = final[final["schedule"] == BASELINE][column].dropna().tolist()
        if base:
            references[BASELINE_LABEL] = Cell(stats.mean(base), stats.std(base), len(base))
    if results.teacher and column == "test_acc" and results.teacher.get("test_acc") is not None:
        label = (
            "teacher"
            if len(results.teacher["fingerprints"]) == 1
            else f"teacher ensemble ({results.teacher.get('ensemble')})"
        )
        references[label] = Cell(float(results.teacher["test_acc"]), math.nan, 1)
    return references


def format_cell(cell: Cell, percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    text = f"{cell.mean * scale:.{digits}f}"
    if not math.isnan(cell.std):
        text += f" ± {cell.std * scale:.{digits}f}"
    text += f" ({cell.n})"
    return f"{text} {cell.marker}" if cell.marker else text


def table_rows(table: TemperatureTable) -> list[tuple[str, list[tuple[str, bool]], bool]]:
    """(label, [(cell text, is the row's best)], is a reference row) for every row: what the terminal,
    report.md and report.html each decorate in their own way."""
    rows = []
    for label in [*table.rows, *(label for label in table.pruned if label not in table.rows)]:
        cells, pruned = table.rows.get(label, {}), table.pruned.get(label, {})
        texts = [
            (format_cell(cells[t], table.percent), cells[t].best)
            if t in cells
            else (f"pruned @{pruned[t]}" if t in pruned else "", False)
            for t in table.temperatures
        ]
        rows.append((label, texts, False))
    blanks = [("", False)] * (len(table.temperatures) - 1)
    for label, cell in table.references.items():
        rows.append((label, [(format_cell(cell, table.percent), False), *blanks], True))
    return rows


# --- everything a report shows ------------------------------------------------------------------
