"""A search in the report: its budget against the full grid's, its chosen cell, and the confirmation at
fresh seeds, whose test accuracy is the number the verdict quotes. The search's own seeds chose the cell
(on validation); the confirmation's seeds took no part in choosing it, nor in pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from kdtemp.report import stats
from kdtemp.search.record import SearchRecord, spent_text
from kdtemp.store.records import BASELINE


@dataclass
class Confirmation:
    seeds: list[int]
    cell_test_acc: list[float]
    """The chosen cell's last-epoch test accuracy at each confirmation seed, in seed order."""
    baseline_test_acc: list[float]
    difference: stats.PairedDifference
    p_value: float


@dataclass
class SearchView:
    record: SearchRecord
    confirmation: Confirmation | None

    def covers(self, run_ids) -> bool:
        """Whether a setting's runs include the search's trials: its lines belong to that setting's table
        only, not to a sweep of another setting in the same experiment."""
        trial_runs = {run_id for trial in self.record.trials for run_id in trial.run_ids}
        return not trial_runs.isdisjoint(run_ids)

    @property
    def budget_line(self) -> str:
        record = self.record
        states: dict[str, int] = {}
        for trial in record.trials:
            states[trial.state] = states.get(trial.state, 0) + 1
        counts = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        spent = spent_text(
            record.spent_student_epochs, record.grid_student_epochs, record.shared_student_epochs
        )
        if record.confirm_student_epochs:
            spent += f", and {record.confirm_student_epochs} more to confirm"
        return f"search ({record.pruner}): {len(record.trials)} trials ({counts}); {spent}"

    def verdict_line(self) -> str:
        chosen = self.record.chosen
        if chosen is None:
            return "search: no trial completed yet, so none is chosen"
        cell = f"{chosen['schedule']} T={chosen['t0']:g} alpha {chosen['alpha']:g}"
        head = f"search chose {cell} on validation ({100 * chosen['val_acc']:.1f}%)"
        confirmation = self.confirmation
        if confirmation is None and self.record.confirm_run_ids:
            return f"{head}; its confirmation at fresh seeds has not finished: run the same search again"
        if confirmation is None:
            return (
                f"{head}; not confirmed: its test accuracy in the table is of the seeds that chose it; "
                "`kdtemp search --confirm` retrains it and no-KD at fresh seeds"
            )
        d = confirmation.difference
        interval = "" if math.isnan(d.low) else f", 95% CI {100 * d.low:+.1f} to {100 * d.high:+.1f}"
        p = "" if math.isnan(confirmation.p_value) else f", p = {confirmation.p_value:.2g}"
        return (
            f"{head}; confirmed at fresh seeds {', '.join(map(str, confirmation.seeds))}: "
            f"{100 * stats.mean(confirmation.cell_test_acc):.1f}% on test against no-KD's "
            f"{100 * stats.mean(confirmation.baseline_test_acc):.1f}% "
            f"({100 * d.mean:+.1f} points{interval}{p}, paired over seeds)"
        )


def split_confirmation(
    final: pd.DataFrame, record: SearchRecord, partial: set[str] | frozenset[str] = frozenset()
) -> tuple[pd.DataFrame, Confirmation | None]:
    """The search's runs without the confirmation's, and the confirmation: the chosen cell against no-KD,
    paired seed by seed, on test accuracy at the last epoch (the budget the search trained for); None
    until every confirmation seed has both runs complete."""
    if final.empty or not record.confirm_run_ids:
        return final, None
    confirming = final["run_id"].isin(record.confirm_run_ids)
    others = final[~confirming].reset_index(drop=True)
    runs = final[confirming & ~final["run_id"].isin(partial) & (final["epoch"] + 1 == record.epochs)]
    if "same_as" in runs:  # the chosen cell shown again under a label sharing its curve: counted once
        runs = runs[runs["same_as"].isna()]
    cell = runs[runs["schedule"] != BASELINE].sort_values("seed")
    baseline = runs[runs["schedule"] == BASELINE].sort_values("seed")
    paired = cell.merge(baseline, on="seed", suffixes=("", "_baseline"), validate="one_to_one")
    if sorted(paired["seed"].astype(int)) != sorted(record.confirm_seeds):
        return others, None
    treated, control = paired["test_acc"].tolist(), paired["test_acc_baseline"].tolist()
    confirmation = Confirmation(
        [int(seed) for seed in paired["seed"]],
        treated,
        control,
        stats.paired_difference(treated, control),
        stats.paired_t_test(treated, control),
    )
    return others, confirmation
