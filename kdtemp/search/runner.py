"""The `kdtemp search` job: the no-KD baseline, then batches of trials asked from the study and trained in
lockstep with pruning (kdtemp.search.lockstep), then, with --confirm, the chosen cell and no-KD again at
fresh seeds to the full budget. search.json records it all for the report.

Killed at any moment, the same command resumes: the study is on disk, a trial left RUNNING by a dead
process is taken over (its lock is free) and resumes from its runs' checkpoints, and waiting trials are
asked next. Several processes may run the same command on one study; each trains its own trials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kdtemp.config.schema import ExperimentConfig
from kdtemp.engine.job_setup import StopCheck
from kdtemp.events import Emit, Note, ignore
from kdtemp.search.lockstep import (
    LockstepBatch,
    TrialWork,
    describe,
    epochs_done,
    trained_epochs,
    validation_curve,
)
from kdtemp.search.record import SearchRecord, TrialRecord, spent_text
from kdtemp.search.space import cell_of, check_space, finite_cells, has_cell, suggest_cell, total_trials
from kdtemp.search.study import open_study, setup_lock
from kdtemp.store.files import atomic_write_json, check_writable, is_completed, read_summary
from kdtemp.store.locks import RunLock, owner_record
from kdtemp.sweep.experiment import PreparedExperiment, prepare_experiment
from kdtemp.sweep.plan import GridCell, RunSpec, baseline_runs, cell_runs, shared_identity
from kdtemp.sweep.recording import SweepState
from kdtemp.sweep.runner import record_same_curves, sweep_state, train_group

CONTINUOUS_BATCH = 8


@dataclass
class SearchResult:
    trials: dict[str, int]
    """Trials of the study by state (complete, pruned, failed, running)."""
    chosen: dict | None
    spent_student_epochs: int
    grid_student_epochs: int | None
    seconds: float
    experiment_dir: Path
    busy: list[int] = field(default_factory=list)
    """Trials another process holds, left to it."""
    confirm_seeds: list[int] = field(default_factory=list)
    """The fresh seeds the confirmation trained (empty without one)."""
    shared_student_epochs: int = 0
    """Epochs one member trained for several runs, beyond spent_student_epochs (search/shared_prefix.py)."""

    @property
    def confirmed(self) -> bool:
        return bool(self.confirm_seeds)

    @property
    def budget_line(self) -> str:
        return spent_text(self.spent_student_epochs, self.grid_student_epochs, self.shared_student_epochs)


@dataclass
class _Search:
    config: ExperimentConfig
    experiment: PreparedExperiment
    state: SweepState
    study: optuna.Study
    shared: dict
    skipped: set[int] = field(default_factory=set)

    @property
    def layout(self):
        return self.experiment.layout

    def runs_of(self, cell: GridCell, seeds: list[int] | None = None) -> list[RunSpec]:
        config = self.config
        seeds = config.kd.seeds if seeds is None else seeds
        return cell_runs(
            self.shared, cell.schedule, cell.label, cell.t0, cell.alpha, seeds, config.student.epochs
        )


def search(
    config: ExperimentConfig, should_stop: StopCheck = None, worker: str | None = None, emit: Emit = ignore
) -> SearchResult:
    """Search the grid (or ranges) of `config`, reporting progress through `emit`."""
    started = time.perf_counter()
    check_space(config)
    experiment = prepare_experiment(config, emit)
    check_writable(experiment.layout.root)
    shared = shared_identity(config, experiment.teacher_fingerprint)
    study = open_study(config, experiment.layout, shared)
    state = sweep_state(experiment, False, should_stop, worker, 0, emit)
    job = _Search(config, experiment, state, study, shared)
    if not config.search.continuous:
        record_same_curves(experiment.layout, config, emit)
    baseline = baseline_runs(job.shared, config.kd.seeds)
    baseline_locks = _lock_runs(job, baseline)  # trained in the first batch's groups, never judged
    limit = experiment.group_limit()
    batch_size, trials = _batch_size(config, limit), total_trials(config)
    emit(
        Note(
            f"search: {trials} trial{'' if trials == 1 else 's'}, {batch_size} at a time, "
            f"pruner {config.search.pruner}"
        )
    )
    number = 0
    while True:
        works, locks = _next_batch(job, batch_size)
        if not works:
            break
        number += 1
        try:
            cells = ", ".join(describe(work.cell) for work in works[:4]) + (", ..." if len(works) > 4 else "")
            emit(Note(f"batch {number}: {len(works)} trials ({cells})"))
            extra = [run for run in baseline if baseline_locks.get(run.run_id)]
            LockstepBatch(state, study, works, experiment.seeds_can_share_a_group, limit, extra).run()
        finally:
            for lock in [*locks, *baseline_locks.values()]:
                lock.release()
            baseline_locks = {}
        _write_record(job, baseline)
    for lock in baseline_locks.values():
        lock.release()
    _train_runs(job, baseline, "no-KD baseline")  # when no batch was left to train it with
    chosen = _chosen(study)
    confirmed = False
    if wants_confirmation(config) and chosen is not None:
        _confirm(job, chosen)
        confirmed = True
    record = _write_record(job, baseline)
    counts: dict[str, int] = {}
    for trial in record.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    return SearchResult(
        counts,
        record.chosen,
        record.spent_student_epochs,
        record.grid_student_epochs,
        time.perf_counter() - started,
        experiment.layout.root,
        sorted(job.skipped),
        confirm_seeds(config) if confirmed else [],
        record.shared_student_epochs,
    )


def _batch_size(config: ExperimentConfig, limit: int | None) -> int:
    """Trials per batch: search.batch, else all cells of a grid (8 of a continuous space), capped so a
    batch's runs and the no-KD runs fit one group."""
    size = config.search.batch or (CONTINUOUS_BATCH if config.search.continuous else total_trials(config))
    if limit is not None:  # room for the no-KD runs, which train with the first batch
        size = min(size, max(1, limit // len(config.kd.seeds) - 1))
    return max(1, size)


def _train_runs(job: _Search, runs: list[RunSpec], label: str) -> None:
    """Runs trained to the full budget as a sweep trains them (the baseline, a confirmation)."""
    pending = [run for run in runs if not is_completed(job.layout.run_dir(run.run_id))]
    if pending:
        job.state.emit(Note(f"{label}: {len(pending)} runs"))
        train_group(job.state, pending, label)


def _lock_runs(job: _Search, runs: list[RunSpec]) -> dict[str, RunLock]:
    """Locks of the runs not completed that no other process holds."""
    locks = {}
    for run in runs:
        if is_completed(job.layout.run_dir(run.run_id)):
            continue
        lock = RunLock(job.layout.lock_path(run.run_id))
        if lock.acquire():
            atomic_write_json(job.layout.run_files(run.run_id).owner, owner_record(job.state.worker))
            locks[run.run_id] = lock
    return locks


# -- asking for trials ------------------------------------------------------------------------------


def _trial_lock(job: _Search, number: int) -> RunLock:
    return RunLock(job.layout.search_dir / "locks" / f"trial-{number}.lock")


def _next_batch(job: _Search, size: int) -> tuple[list[TrialWork], list[RunLock]]:
    """Up to `size` trials, each with its trial and run locks held: trials a dead process left RUNNING
    first, then waiting (enqueued) ones, then new ones while the space has trials left."""
    works: list[TrialWork] = []
    locks: list[RunLock] = []
    study, config = job.study, job.config
    with setup_lock(job.layout):
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if len(works) >= size:
                break
            if frozen.number in job.skipped:
                continue
            trial = optuna.trial.Trial(study, frozen._trial_id)  # noqa: SLF001 - resuming a RUNNING trial
            _take(job, trial, set(frozen.intermediate_values), works, locks)
        while len(works) < size and _trials_left(study, config):
            trial = study.ask()
            _take(job, trial, set(), works, locks)
    return works, locks


def _trials_left(study: optuna.Study, config: ExperimentConfig) -> bool:
    if config.search.continuous:
        return len(study.get_trials(deepcopy=False)) < total_trials(config)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _take(job: _Search, trial: optuna.Trial, reported: set[int], works: list, locks: list) -> None:
    """Lock the trial and its runs for this process; a trial another process holds is left to it."""
    lock = _trial_lock(job, trial.number)
    if not lock.acquire():
        job.skipped.add(trial.number)  # a live process trains it
        return
    cell = suggest_cell(trial, job.config)
    runs = job.runs_of(cell)
    held = [lock]
    for run in runs:
        run_lock = RunLock(job.layout.lock_path(run.run_id))
        if not run_lock.acquire():
            for taken in held:
                taken.release()
            job.skipped.add(trial.number)
            job.state.emit(
                Note(f"trial {trial.number}: {run.run_id} is trained by another process; left to it")
            )
            return
        atomic_write_json(job.layout.run_files(run.run_id).owner, owner_record(job.state.worker))
        held.append(run_lock)
    locks.extend(held)
    works.append(TrialWork(trial, cell, runs, reported))


# -- the answer -----------------------------------------------------------------------------------------


def _chosen(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def wants_confirmation(config: ExperimentConfig) -> bool:
    """--confirm, or confirmation seeds given."""
    return config.search.confirm or config.search.confirm_seeds is not None


def confirm_seeds(config: ExperimentConfig) -> list[int]:
    """search.confirm_seeds, else as many seeds as the search used, after the largest of them."""
    if config.search.confirm_seeds is not None:
        return list(config.search.confirm_seeds)
    start = max(config.kd.seeds) + 1
    return list(range(start, start + len(config.kd.seeds)))


def _confirm(job: _Search, chosen: optuna.trial.FrozenTrial) -> None:
    cell = cell_of(chosen.params, job.config)
    seeds = confirm_seeds(job.config)
    job.state.emit(Note(f"confirming {describe(cell)} and no-KD at fresh seeds {', '.join(map(str, seeds))}"))
    _train_runs(job, job.runs_of(cell, seeds) + baseline_runs(job.shared, seeds), "confirmation")


def _pruned_epoch(job: _Search, runs: list[RunSpec]) -> int | None:
    """The epoch a pruned trial stopped at, as its runs' summary.json records it."""
    summary = read_summary(job.layout.run_dir(runs[0].run_id))
    return summary.pruned_epoch if summary is not None else None


def _write_record(job: _Search, baseline: list[RunSpec]) -> SearchRecord:
    config, state = job.config, job.state
    trials, spent = [], sum(trained_epochs(state, run) for run in baseline)
    shared = 0
    for frozen in job.study.get_trials(deepcopy=False):
        if frozen.state == TrialState.WAITING or not has_cell(frozen.params):
            continue  # not asked yet, or another worker is still suggesting its cell
        cell = cell_of(frozen.params, config)
        runs = job.runs_of(cell)
        trained = sum(trained_epochs(state, run) for run in runs)
        spent += trained
        shared += sum(epochs_done(state, run) for run in runs) - trained
        trials.append(
            TrialRecord(
                frozen.number,
                cell.label,
                cell.t0,
                cell.alpha,
                frozen.state.name.lower(),
                [run.run_id for run in runs],
                validation_curve(state, runs),
                _pruned_epoch(job, runs) if frozen.state == TrialState.PRUNED else None,
            )
        )
    chosen = _chosen(job.study)
    chosen_record = None
    confirm_ids: list[str] = []
    confirming: list[RunSpec] = []
    seeds = confirm_seeds(config)
    if chosen is not None:
        cell = cell_of(chosen.params, config)
        chosen_record = {"schedule": cell.label, "t0": cell.t0, "alpha": cell.alpha, "val_acc": chosen.value}
        if wants_confirmation(config):
            confirming = job.runs_of(cell, seeds) + baseline_runs(job.shared, seeds)
            confirm_ids = [run.run_id for run in confirming]
    epochs = config.student.epochs
    grid = None
    if not config.search.continuous:
        grid = (len(finite_cells(config)) + 1) * len(config.kd.seeds) * epochs
    confirm_epochs = sum(epochs_done(state, run) for run in confirming)
    record = SearchRecord(
        list(config.kd.seeds),
        epochs,
        config.search.pruner,
        trials,
        [run.run_id for run in baseline],
        spent,
        grid,
        chosen_record,
        seeds if confirm_ids else [],
        confirm_ids,
        confirm_epochs,
        shared,
    )
    record.write(job.layout.search_dir)
    return record
