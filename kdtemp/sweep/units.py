"""The unit of work a launcher hands to a process: a lockstep group of one seed's runs (cut by
train.max_group_size) with their later born-again generations, so a teacher pass stays shared within
a unit; and how the units' results combine into one SweepResult.
"""

from __future__ import annotations

from pathlib import Path

from kdtemp.config.schema import ExperimentConfig
from kdtemp.events import SweepResult
from kdtemp.store.files import is_completed
from kdtemp.store.layout import ExperimentLayout
from kdtemp.sweep.plan import RunSpec, group_runs, planned_runs

POLL_SECONDS = 1.0


def work_units(
    config: ExperimentConfig, force: bool = False, at_least: int = 1, runs: list[RunSpec] | None = None
) -> list[list[str]]:
    """Run ids per unit of work, for the runs still to train; split further until there are `at_least`.

    `runs`: the planned runs when the caller has them (planning hashes every teacher checkpoint)."""
    runs = planned_runs(config) if runs is None else runs
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    by_id = {run.run_id: run for run in runs}

    def root(run: RunSpec) -> RunSpec:
        while run.parent is not None:
            run = by_id[run.parent]
        return run

    lineages: dict[str, list[RunSpec]] = {}
    for run in runs:
        if force or not is_completed(layout.run_dir(run.run_id)):
            lineages.setdefault(root(run).run_id, []).append(run)
    groups = group_runs(
        [by_id[root_id] for root_id in lineages], config.train.max_group_size, across_seeds=False
    )
    while len(groups) < at_least and any(len(group) > 1 for group in groups):
        largest = max(groups, key=len)
        groups.remove(largest)
        groups += [largest[: len(largest) // 2], largest[len(largest) // 2 :]]
    return [[run.run_id for root_run in group for run in lineages[root_run.run_id]] for group in groups]


def combine(results: list[SweepResult], planned: int, seconds: float, experiment_dir: Path) -> SweepResult:
    """One SweepResult for the whole sweep from its units' results."""
    trained = sum(r.resumed + r.started for r in results)
    return SweepResult(
        planned=planned,
        skipped=planned - trained - sum(len(r.busy) for r in results),
        resumed=sum(r.resumed for r in results),
        started=sum(r.started for r in results),
        completed=sum(r.completed for r in results),
        failed=[f for r in results for f in r.failed],
        busy=[b for r in results for b in r.busy],
        seconds=seconds,
        experiment_dir=experiment_dir,
    )
