"""Results in, tables out: aggregate each experiment's runs into accuracy-versus-temperature summaries.

kdtemp.report.results reads the runs back. Only completed runs are averaged. Failed, unfinished and unreadable
runs are counted and listed, never averaged in. Headline numbers are last-epoch values; best-epoch
accuracy is labelled as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from kdtemp.errors import RunsError
from kdtemp.engine.metrics import soft_target_statistics
from kdtemp.store.records import BASELINE, TEACHER
from kdtemp.report.results import ExperimentResults, cached_teacher_logits, load_results
from kdtemp.report.settings import split_by_setting
from kdtemp.report import stats, verdict

if TYPE_CHECKING:
    from kdtemp.losses import Ensemble

METRICS = {
    # --metric name: (column in the per-run table, shown as percent, higher is better)
    "test_acc": ("test_acc", True, True),
    "best_test_acc": ("best_test_acc", True, True),
    "test_loss": ("test_loss", False, False),
    "agreement": ("agreement", True, True),
    "kl_to_teacher": ("test_kl", False, False),
    "ece": ("test_ece", True, False),
}
ENTROPY_LADDER = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SUMMARY_COLUMNS = [
    "schedule",
    "alpha",
    "t0",
    "generation",
    "n",
    "mean_test_acc",
    "std_test_acc",
    "ci95_test_acc",
    "mean_best_test_acc",
    "delta_vs_baseline",
    "p_value",
    "holm_p_value",
    "p_vs_best",
    "p_vs_constant",
    "mean_test_loss",
    "mean_agreement",
    "mean_kl_to_teacher",
    "mean_ece",
    "gap_closed",
    "compression",
    "speedup",
    "failed",
]


# --- soft targets versus temperature ----------------------------------------------------------


def entropy_table(
    teacher_logits: torch.Tensor,
    grid_temperatures: list[float],
    ensemble: Ensemble = "mean_probs",
    weights: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Mean entropy (nats) and top-class probability of the teacher's soft targets per temperature.

    Temperatures are the grid's and a standard ladder; relative_entropy divides by the T = 1 value.
    """
    temperatures = sorted(set(ENTROPY_LADDER) | {float(t) for t in grid_temperatures})
    rows = []
    for temperature in temperatures:
        entropy, max_prob = soft_target_statistics(teacher_logits, temperature, ensemble, weights)
        rows.append(
            {
                "temperature": temperature,
                "mean_entropy": entropy,
                "mean_max_prob": max_prob,
                "in_grid": temperature in grid_temperatures,
            }
        )
    frame = pd.DataFrame(rows)
    at_one, _ = soft_target_statistics(teacher_logits, 1.0, ensemble, weights)
    frame["relative_entropy"] = frame["mean_entropy"] / at_one if at_one > 0 else math.nan
    return frame[["temperature", "mean_entropy", "mean_max_prob", "relative_entropy", "in_grid"]]


# --- summaries ---------------------------------------------------------------------------------


def summarize(results: ExperimentResults, accuracy_tests: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per schedule x alpha x t0 x generation, the baseline row(s), and the teacher row.

    The tests are on test_acc, the headline metric, whatever `--metric` the table shows: p_value against
    no-KD and its Holm adjustment over the setting's cells, p_vs_best and p_vs_constant (kdtemp.report.verdict);
    `accuracy_tests`: verdict.cell_tests on test_acc when the caller has them already."""
    rows = []
    final = results.final
    baseline = final[final["schedule"] == BASELINE] if not final.empty else pd.DataFrame()
    tests = {
        verdict.cell_key(*row[verdict.GRID_KEYS]): row
        for _, row in (
            accuracy_tests if accuracy_tests is not None else verdict.cell_tests(final, "test_acc", True)
        ).iterrows()
    }
    seen = set()
    if not final.empty:
        for key, cell in final.groupby(verdict.GRID_KEYS, dropna=False, sort=False):
            key = verdict.cell_key(*key)
            seen.add(key)
            rows.append(_summary_row(key, cell, baseline, results))
            if key in tests:
                rows[-1].update({c: tests[key][c] for c in verdict.SUMMARY_TEST_COLUMNS})
    for (schedule, alpha, t0, generation), count in results.cells_failed.items():
        if (schedule, alpha, t0, generation) not in seen:
            rows.append(
                {
                    "schedule": schedule,
                    "alpha": alpha,
                    "t0": t0,
                    "generation": generation,
                    "n": 0,
                    "failed": count,
                }
            )
    if results.teacher:
        rows.append(
            {
                "schedule": TEACHER,
                "n": 1,
                "mean_test_acc": results.teacher.get("test_acc"),
                "mean_test_loss": results.teacher.get("test_loss"),
                "failed": 0,
            }
        )
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    order = {BASELINE: 1, TEACHER: 2}
    frame["_order"] = frame["schedule"].map(lambda s: order.get(s, 0))
    frame = frame.sort_values(["_order", "generation", "schedule", "alpha", "t0"], kind="stable").drop(
        columns="_order"
    )
    return frame.reset_index(drop=True)


def _summary_row(key: tuple, cell: pd.DataFrame, baseline: pd.DataFrame, results: ExperimentResults) -> dict:
    schedule, alpha, t0, generation = key
    accuracies = cell["test_acc"].tolist()
    row = {
        "schedule": schedule,
        "alpha": alpha,
        "t0": t0,
        "generation": generation,
        "n": len(cell),
        "mean_test_acc": stats.mean(accuracies),
        "std_test_acc": stats.std(accuracies),
        "ci95_test_acc": stats.ci95_half_width(accuracies),
        "mean_best_test_acc": stats.mean(cell["best_test_acc"].tolist()),
        "mean_test_loss": stats.mean(cell["test_loss"].tolist()),
        "mean_agreement": _mean_of(cell, "agreement"),
        "mean_kl_to_teacher": _mean_of(cell, "test_kl"),
        "mean_ece": _mean_of(cell, "test_ece"),
        "compression": results.compression,
        "speedup": results.speedup,
        "failed": results.cells_failed.get(key, 0),
    }
    if schedule != BASELINE and not baseline.empty:
        row["gap_closed"] = _gap_closed(cell, baseline, (results.teacher or {}).get("test_acc"))
    return row


def _gap_closed(cell: pd.DataFrame, baseline: pd.DataFrame, teacher: float | None) -> float:
    """(cell mean - baseline mean) / (teacher - baseline mean), both means over exactly the seeds with a run
    in the cell and a no-KD baseline of the same setting (as delta_vs_baseline and p_value,
    verdict.cell_tests)."""
    treated, control = verdict.paired_values(cell, baseline, "test_acc", verdict.baseline_pairing(cell))
    base = stats.mean(control)
    if not treated or teacher is None or teacher == base:
        return math.nan
    return (stats.mean(treated) - base) / (teacher - base)


def _mean_of(cell: pd.DataFrame, column: str) -> float:
    if column not in cell:
        return math.nan
    values = cell[column].dropna().tolist()
    return stats.mean(values) if values else math.nan


def cells_matching(frame: pd.DataFrame, cell) -> pd.DataFrame:
    """The rows of `frame` of one grid cell (schedule, alpha, t0, generation); a missing t0 matches a
    missing t0."""
    t0 = frame["t0"].isna() if pd.isna(cell["t0"]) else frame["t0"] == cell["t0"]
    return frame[
        (frame["schedule"] == cell["schedule"])
        & (frame["alpha"] == cell["alpha"])
        & t0
        & (frame["generation"] == cell["generation"])
    ]


# --- the accuracy-versus-temperature table ---------------------------------------------------


MARKERS = {"better": "*", "worse": "†"}
BASELINE_LABEL = "baseline (no KD)"


@dataclass
class Cell:
    mean: float
    std: float
    n: int
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

    @property
    def heading(self) -> str:
        """What a cell holds: `test_acc (%), mean ± sd (n seeds), last epoch`."""
        epoch = "each run's best epoch" if self.metric == "best_test_acc" else "last epoch"
        return f"{self.metric}{' (%)' if self.percent else ''}, mean ± sd (n seeds), {epoch}"


LEGEND = (
    "bold = best temperature of the row; * / † = better / worse than the no-KD baseline: paired t-test over "
    "seeds, Holm-adjusted p < 0.05 over the table's cells"
)


def check_metric(metric: str) -> None:
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
    temperatures = sorted(float(t) for t in grid["t0"].dropna().unique())
    alphas = sorted(grid["alpha"].unique())
    rows: dict[str, dict[float, Cell]] = {}
    for (generation, schedule, alpha), part in grid.groupby(["generation", "schedule", "alpha"], sort=True):
        label = schedule if len(alphas) == 1 else f"{schedule} (alpha {alpha:g})"
        if results.generations:
            label += f", gen {generation}"
        cells = {
            float(t0): _table_cell(cell, column, tests, higher_better) for t0, cell in part.groupby("t0")
        }
        pick = max if higher_better else min
        best_t = pick(cells, key=lambda t: cells[t].mean)
        cells[best_t].best = True
        rows[label] = cells
    return TemperatureTable(metric, percent, temperatures, rows, _references(results, column), higher_better)


def _table_cell(cell: pd.DataFrame, column: str, tests: pd.DataFrame, higher_better: bool) -> Cell:
    values = cell[column].dropna().tolist()
    result = Cell(stats.mean(values), stats.std(values), len(values))
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
    for label, cells in table.rows.items():
        texts = [
            (format_cell(cells[t], table.percent), cells[t].best) if t in cells else ("", False)
            for t in table.temperatures
        ]
        rows.append((label, texts, False))
    blanks = [("", False)] * (len(table.temperatures) - 1)
    for label, cell in table.references.items():
        rows.append((label, [(format_cell(cell, table.percent), False), *blanks], True))
    return rows


def problem_lines(results: ExperimentResults) -> list[str]:
    lines = []
    for run_id, reason in results.failed:
        lines.append(f"- failed: {run_id}: {reason}")
    for run_id in results.unfinished:
        lines.append(f"- unfinished (not averaged): {run_id}")
    for run_id, reason in results.unreadable:
        lines.append(f"- skipped, unreadable: {run_id}: {reason}")
    return lines


# --- everything a report shows ------------------------------------------------------------------


@dataclass
class SettingReport:
    """The table, summary and headline of one setting of an experiment."""

    label: str | None
    """What tells this setting apart (`student.epochs = 5`); None when the experiment has one setting."""
    results: ExperimentResults
    summary: pd.DataFrame
    table: TemperatureTable
    tests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=verdict.TEST_COLUMNS))
    """verdict.cell_tests on the table's metric: what the markers and the verdict
    (report_text.headline) say."""


@dataclass
class Report:
    results: ExperimentResults
    """Every run of the experiment, all settings together."""
    settings: list[SettingReport]
    entropy: pd.DataFrame | None
    entropy_split: str | None

    @property
    def summary(self) -> pd.DataFrame:
        """Every setting's summary rows; a leading `setting` column (the label) when there are several."""
        if len(self.settings) == 1:
            return self.settings[0].summary
        return pd.concat(
            [s.summary.assign(setting=s.label)[["setting", *s.summary.columns]] for s in self.settings],
            ignore_index=True,
        )

    @property
    def metric(self) -> str:
        return self.settings[0].table.metric

    @property
    def table(self) -> TemperatureTable:
        """The table of a one-setting experiment; with several, each setting's is in `settings`."""
        if len(self.settings) > 1:
            raise ValueError(
                f"{self.results.name} holds {len(self.settings)} settings: "
                "take each one's table from .settings"
            )
        return self.settings[0].table


def build_report(root: Path, metric: str = "test_acc", partial: bool = False) -> Report:
    check_metric(metric)
    results = load_results(root, partial)
    settings = []
    for label, part in split_by_setting(results):
        accuracy_tests = verdict.cell_tests(part.final, "test_acc", True)
        column, _, higher_better = METRICS[metric]
        tests = (
            accuracy_tests if column == "test_acc" else verdict.cell_tests(part.final, column, higher_better)
        )
        summary = summarize(part, accuracy_tests)
        settings.append(SettingReport(label, part, summary, temperature_table(part, metric, tests), tests))
    logits, split = cached_teacher_logits(results)
    entropy = None
    if logits is not None:
        grid = [float(t) for t in results.final["t0"].dropna().unique()] if not results.final.empty else []
        weights = (results.teacher or {}).get("weights")
        entropy = entropy_table(
            logits,
            grid,
            (results.teacher or {}).get("ensemble") or "mean_probs",
            None if weights is None else torch.tensor(weights, dtype=torch.float64),
        )
    return Report(results, settings, entropy, split)
