"""Which temperature, and which schedule: every grid cell of one setting tested against the no-KD
baseline and against the cell chosen as best, the numbers kdtemp.report.wording puts in words.

The best cell is chosen on validation accuracy (`chosen_on_val`) and reported on test, so its comparison
with no-KD on test is the table's one confirmatory test, unadjusted. Every test is the paired t-test over
seeds (`stats.paired_t_test`) with the paired difference's 95% CI (`stats.paired_difference`): students
of one seed share their initial weights and batch order, and a cell pairs with the baseline of its own
setting and seed. The p-values of every cell against the baseline are Holm-adjusted over the table
(`stats.holm`) for the table's markers, since a table of 20 cells stars one by chance at p < 0.05 more
often than not. Without a validation split (data.val_fraction 0, or runs written before kdtemp had one)
the best cell is chosen on the test set itself and its test against no-KD is Holm-adjusted like the rest.
"""

from __future__ import annotations

import pandas as pd

from kdtemp.report import stats
from kdtemp.store.records import BASELINE

GRID_KEYS = ["schedule", "alpha", "t0", "generation"]
CONSTANT = "constant"
SIGNIFICANCE = 0.05
SELECTION_COLUMN = "val_acc"
"""What the best cell is chosen on: mean validation accuracy, whatever metric the table shows."""
SUMMARY_TEST_COLUMNS = (
    "delta_vs_baseline",
    "p_value",
    "holm_p_value",
    "diff_vs_best",
    "diff_vs_best_low",
    "diff_vs_best_high",
    "p_vs_best",
    "tost_p_vs_best",
    "p_vs_constant",
)
"""What summary.csv takes from cell_tests, so each test is computed once."""
TEST_COLUMNS = [
    *GRID_KEYS,
    "n",
    "mean",
    "val_mean",
    "delta_low",
    "delta_high",
    *SUMMARY_TEST_COLUMNS,
    "best",
    "chosen_on_val",
    "confirmatory",
]


def in_table_units(points: float | None, percent: bool) -> float | None:
    """A difference given in points (report.min_effect, report.equivalence_margin) in the units a table's
    metric is stored in: a fraction for percent metrics, the metric's own units otherwise."""
    return None if points is None else points / 100 if percent else points


def measured_on_validation(column: str) -> bool:
    """A table of a validation metric: its best cell is chosen and tested on the same split."""
    return column.startswith("val_")


def cell_key(schedule, alpha, t0, generation) -> tuple:
    """(schedule, alpha, t0 or None, generation) with plain Python numbers, as summary rows are keyed."""
    return schedule, float(alpha), None if pd.isna(t0) else float(t0), int(generation)


def paired_values(cell: pd.DataFrame, other: pd.DataFrame, column: str, on: list[str]) -> tuple[list, list]:
    """`column` of `cell` and of `other` over exactly the seeds both have (matched on `on`), in seed order."""
    left, right = cell[[*on, column]].dropna(), other[[*on, column]].dropna()
    paired = left.merge(right, on=on, suffixes=("", "_other"), validate="many_to_one").sort_values(on)
    return paired[column].tolist(), paired[f"{column}_other"].tolist()


def pairing(frame: pd.DataFrame) -> list[str]:
    """Cells of one setting pair by seed; with the setting column present, never across settings."""
    return ["setting", "seed"] if "setting" in frame else ["seed"]


def baseline_pairing(frame: pd.DataFrame) -> list[str]:
    """A cell pairs with the no-KD runs of its own baseline setting, seed by seed."""
    return ["baseline_setting", "seed"] if "baseline_setting" in frame else ["seed"]


def chosen_on_val(grid: pd.DataFrame) -> bool:
    """Whether every run of the grid was evaluated on a validation split of its own, so the best cell can
    be chosen on it (not on the test set it then reports)."""
    if SELECTION_COLUMN not in grid or grid[SELECTION_COLUMN].isna().any():
        return False
    return "val_is_test" not in grid or not grid["val_is_test"].astype(bool).any()


def cell_tests(
    final: pd.DataFrame, column: str, higher_better: bool, margin: float | None = None
) -> pd.DataFrame:
    """One row per grid cell of one setting: n, mean of `column`, val_mean, the paired difference to no-KD
    (delta_vs_baseline with its 95% CI, p_value, holm_p_value over the table), to the best cell (diff_vs_best
    with its 95% CI, p_vs_best and, with an equivalence `margin` in `column`'s units, tost_p_vs_best), to
    constant at the same alpha, t0 and generation (p_vs_constant), and `best`: the cell with the highest
    mean validation accuracy (`chosen_on_val`), else the best mean of `column`."""
    if final.empty or column not in final:
        return pd.DataFrame(columns=TEST_COLUMNS)
    grid = final[(final["schedule"] != BASELINE) & final[column].notna()]
    if "same_as" in grid:  # a cell shown under a second label is tested once, under the first
        grid = grid[grid["same_as"].isna()]
    baseline = final[(final["schedule"] == BASELINE) & final[column].notna()]
    cells = {cell_key(*key): part for key, part in grid.groupby(GRID_KEYS, dropna=False, sort=False)}
    if not cells:
        return pd.DataFrame(columns=TEST_COLUMNS)
    on_val = chosen_on_val(grid)
    if on_val:
        scores = {key: stats.mean(part[SELECTION_COLUMN].tolist()) for key, part in cells.items()}
        best = max(scores, key=scores.__getitem__)
    else:
        means = {key: stats.mean(part[column].tolist()) for key, part in cells.items()}
        best = (max if higher_better else min)(means, key=means.__getitem__)
    rows = [_cell_row(key, part, cells, best, baseline, column, margin) for key, part in cells.items()]
    frame = pd.DataFrame(rows, columns=TEST_COLUMNS)
    frame["holm_p_value"] = stats.holm(frame["p_value"].tolist())
    frame["best"] = [cell_key(*key) == best for key in frame[GRID_KEYS].itertuples(index=False)]
    frame["chosen_on_val"] = on_val
    # a table of a validation metric is chosen and tested on the same split: its tests only explore
    frame["confirmatory"] = on_val and not measured_on_validation(column)
    return frame


def _cell_row(
    key: tuple,
    part: pd.DataFrame,
    cells: dict,
    best: tuple,
    baseline: pd.DataFrame,
    column: str,
    margin: float | None,
) -> dict:
    row = dict(zip(GRID_KEYS, key, strict=False), n=len(part), mean=stats.mean(part[column].tolist()))
    if SELECTION_COLUMN in part:
        row["val_mean"] = stats.mean(part[SELECTION_COLUMN].dropna().tolist())
    if not baseline.empty:
        treated, control = paired_values(part, baseline, column, baseline_pairing(part))
        difference = stats.paired_difference(treated, control)
        row.update(delta_vs_baseline=difference.mean, delta_low=difference.low, delta_high=difference.high)
        row["p_value"] = stats.paired_t_test(treated, control)
    if key != best:
        treated, control = paired_values(part, cells[best], column, pairing(part))
        difference = stats.paired_difference(treated, control)
        row.update(
            diff_vs_best=difference.mean, diff_vs_best_low=difference.low, diff_vs_best_high=difference.high
        )
        row["p_vs_best"] = stats.paired_t_test(treated, control)
        if margin is not None:
            row["tost_p_vs_best"] = stats.tost_p_value(treated, control, margin)
    constant = (CONSTANT, *key[1:])
    if key[0] != CONSTANT and constant in cells:
        row["p_vs_constant"] = stats.paired_t_test(
            *paired_values(part, cells[constant], column, pairing(part))
        )
    return row


def significant(row, higher_better: bool) -> str:
    """ "better" or "worse" than no-KD at Holm-adjusted p < 0.05, else ""."""
    return _direction(row["holm_p_value"], row["delta_vs_baseline"], higher_better)


def confirmed(row, higher_better: bool) -> str:
    """ "better" or "worse" than no-KD by the chosen cell's own test: unadjusted when it was chosen on
    validation and is tested on test (the table's one confirmatory test), else Holm-adjusted like every
    other cell's."""
    p = row["p_value"] if row["confirmatory"] else row["holm_p_value"]
    return _direction(p, row["delta_vs_baseline"], higher_better)


def _direction(p: float, delta: float, higher_better: bool) -> str:
    if pd.isna(p) or p >= SIGNIFICANCE or pd.isna(delta) or delta == 0:
        return ""
    return "better" if (delta > 0) == higher_better else "worse"


def compared_with_best(row, higher_better: bool, margin: float | None) -> str:
    """How a cell stands against the best: "behind" or "ahead" (paired p < 0.05, whatever the margin: a
    difference a test finds is never called a tie), else "tied" (TOST p < 0.05 within the margin),
    "indistinguishable", or "untested" (one seed, or no spread)."""
    p = row["p_vs_best"]
    if not pd.isna(p) and p < SIGNIFICANCE:
        return "ahead" if (row["diff_vs_best"] > 0) == higher_better else "behind"
    if margin is not None and not pd.isna(row["tost_p_vs_best"]) and row["tost_p_vs_best"] < SIGNIFICANCE:
        return "tied"
    return "untested" if pd.isna(p) else "indistinguishable"


def ranked(tests: pd.DataFrame, higher_better: bool) -> pd.DataFrame:
    """Grid cells from best to worst mean."""
    return tests.sort_values("mean", ascending=not higher_better, kind="stable")


def runner_up(tests: pd.DataFrame, higher_better: bool):
    """The cell the best was chosen over most narrowly: the next by validation accuracy when chosen on it,
    else the next by the table's metric; None with one cell."""
    others = tests[~tests["best"]]
    if others.empty:
        return None
    if bool(tests["chosen_on_val"].iloc[0]):
        return others.sort_values("val_mean", ascending=False, kind="stable").iloc[0]
    return ranked(others, higher_better).iloc[0]


def no_spread(values: list[float]) -> bool:
    return len(values) >= 2 and max(values) - min(values) <= stats.TIE_TOLERANCE
