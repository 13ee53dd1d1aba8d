"""What the written report shows, in the markdown and the HTML alike: the figures and their captions,
and the summary columns with their cells' text.
"""

from __future__ import annotations

import math

import pandas as pd

from kdtemp.report.build import Report
from kdtemp.store.records import BASELINE, TEACHER

FIGURES = {
    "accuracy_vs_temperature": "Test accuracy against the grid temperature",
    "temperature_alpha": "Test accuracy over T x alpha",
    "learning_curves": "Learning curves",
    "search_curves": "Each trial's validation curve, and where it was pruned",
    "temperature_schedules": "Temperature schedules as trained",
    "entropy_vs_temperature": "How soft the teacher's targets are",
}


def figure_caption(report: Report, key: str) -> str:
    """FIGURES' caption of `key`, with its setting's label for a per-setting file (key-<i>)."""
    if key in FIGURES:
        return FIGURES[key]
    base, index = key.rsplit("-", 1)
    return f"{FIGURES[base]} ({report.settings[int(index) - 1].label})"


SUMMARY_SHOWN = [
    "setting",
    "schedule",
    "alpha",
    "t0",
    "generation",
    "n",
    "mean_test_acc",
    "std_test_acc",
    "ci95_test_acc",
    "mean_val_acc",
    "mean_test_acc_at_best_val",
    "chosen",
    "delta_vs_baseline",
    "p_value",
    "holm_p_value",
    "diff_vs_best",
    "p_vs_best",
    "p_vs_constant",
    "mean_agreement",
    "mean_kl_to_teacher",
    "mean_ece",
    "gap_closed",
    "failed",
]


P_COLUMNS = ("p_value", "holm_p_value", "p_vs_best", "tost_p_vs_best", "p_vs_constant")


PERCENT_COLUMNS = {
    "mean_test_acc",
    "std_test_acc",
    "ci95_test_acc",
    "mean_val_acc",
    "mean_test_acc_at_best_val",
    "delta_vs_baseline",
    "diff_vs_best",
    "diff_vs_best_low",
    "diff_vs_best_high",
    "mean_agreement",
    "mean_ece",
    "gap_closed",
}


def summary_cell_text(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in PERCENT_COLUMNS:
        return f"{100 * value:.2f}%"
    if column in P_COLUMNS:
        return value if isinstance(value, str) else f"{value:.3g}"
    if column == "mean_kl_to_teacher":
        return f"{value:.3f}"
    if column in ("t0", "alpha"):
        return f"{value:g}"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def summary_shown(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary columns a report shows; a grid cell's missing p-value against no-KD reads "n/a" (n < 2,
    or every seed's difference to the baseline the same), the baseline's and teacher's stay blank, as do
    p_vs_best of the best cell and p_vs_constant where there is no constant cell to compare with."""
    shown = summary[[c for c in SUMMARY_SHOWN if c in summary]].astype(object)
    grid = ~summary["schedule"].isin([BASELINE, TEACHER]) & (summary["n"] > 0)
    for column in ("p_value", "holm_p_value"):
        shown.loc[grid & summary[column].isna(), column] = "n/a"
    return shown
