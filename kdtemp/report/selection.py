"""Which runs a report covers: every run on disk, or, given the sweep's grid options, only the runs of
that grid, so an exploratory `--temps 0.3 --seeds 0` sweep does not stay a column of every later table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from kdtemp.config.schema import ExperimentConfig
from kdtemp.report.results import ExperimentResults
from kdtemp.store.records import BASELINE
from kdtemp.sweep.plan import schedule_labels


@dataclass(frozen=True)
class GridSelection:
    """The grid axes a report keeps: a run outside any of them is left out (no-KD runs by seed only)."""

    temperatures: frozenset[float]
    seeds: frozenset[int]
    schedules: frozenset[str]
    alphas: frozenset[float]

    @classmethod
    def of(cls, config: ExperimentConfig) -> GridSelection:
        """The grid `kdtemp sweep` runs for `config` (and its command-line options)."""
        return cls(
            frozenset(float(t) for t in config.kd.temperatures),
            frozenset(int(s) for s in config.kd.seeds),
            frozenset(schedule_labels(list(config.kd.schedules))),
            frozenset(float(a) for a in config.kd.alpha_grid()),
        )

    def keeps(self, frame: pd.DataFrame) -> pd.Series:
        """Per row of a results frame: whether the run belongs to the grid."""
        seed = frame["seed"].isin(self.seeds)
        baseline = frame["schedule"] == BASELINE
        grid = (
            frame["schedule"].isin(self.schedules)
            & frame["alpha"].astype(float).isin(self.alphas)
            & frame["t0"].astype(float).isin(self.temperatures)
        )
        return seed & (baseline | grid)


def restrict(results: ExperimentResults, selection: GridSelection) -> tuple[ExperimentResults, int]:
    """`results` with only the selection's completed runs (and failed cells), and how many were left out."""
    if results.final.empty:
        return results, 0
    kept = selection.keeps(results.final)
    run_ids = set(results.final.loc[kept, "run_id"])
    curves = (
        results.curves[results.curves["run_id"].isin(run_ids)] if not results.curves.empty else results.curves
    )
    failed = [
        (run_id, reason)
        for run_id, reason in results.failed
        if _failed_cell_kept(results.failed_cells[run_id], selection)
    ]
    pruned = {key: cell for key, cell in results.pruned.items() if _failed_cell_kept(cell[:4], selection)}
    restricted = replace(
        results, final=results.final[kept].reset_index(drop=True), curves=curves, failed=failed, pruned=pruned
    )
    return restricted, int((~kept).sum())


def _failed_cell_kept(cell: tuple, selection: GridSelection) -> bool:
    schedule, alpha, t0, _ = cell
    if schedule == BASELINE:
        return True
    return (
        schedule in selection.schedules
        and alpha is not None
        and float(alpha) in selection.alphas
        and t0 is not None
        and float(t0) in selection.temperatures
    )
