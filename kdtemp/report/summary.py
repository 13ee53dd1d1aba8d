"""summary.csv: one row per cell (schedule, alpha, t0, generation) with its means, tests against no-KD,
gap closed and footprint; and the soft-target entropy of the teacher at each temperature.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd
import torch

from kdtemp.engine.metrics import soft_target_statistics
from kdtemp.report import stats, verdict
from kdtemp.report.results import ExperimentResults
from kdtemp.store.records import BASELINE, TEACHER

if TYPE_CHECKING:
    from kdtemp.losses import Ensemble

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
    "mean_val_acc",
    "mean_test_acc_at_best_val",
    "chosen",
    *verdict.SUMMARY_TEST_COLUMNS,
    "mean_test_loss",
    "mean_agreement",
    "mean_kl_to_teacher",
    "mean_ece",
    "gap_closed",
    "compression",
    "speedup",
    "failed",
]


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


def summarize(results: ExperimentResults, accuracy_tests: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per schedule x alpha x t0 x generation, the baseline row(s), and the teacher row.

    The tests are on test_acc, the headline metric, whatever `--metric` the table shows: p_value against
    no-KD and its Holm adjustment over the setting's cells, the difference to the cell `chosen` on
    validation (diff_vs_best with its 95% CI, p_vs_best, tost_p_vs_best with an equivalence margin) and
    p_vs_constant (kdtemp.report.verdict);
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
                rows[-1]["chosen"] = bool(tests[key]["best"])
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
        "mean_val_acc": _mean_of(cell, "val_acc"),
        "mean_test_acc_at_best_val": _mean_of(cell, "test_acc_at_best_val"),
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
    verdict.cell_tests); NaN when the teacher is no better than no-KD."""
    treated, control = verdict.paired_values(cell, baseline, "test_acc", verdict.baseline_pairing(cell))
    base = stats.mean(control)
    if not treated or teacher is None or teacher <= base:  # no gap to close when no-KD is as good
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
