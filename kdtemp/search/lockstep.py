"""A batch of trials trained as lockstep groups, judged together at each epoch and pruned in place.

Every trial's runs are sweep runs (same ids, files and checkpoints). The batch advances epoch by epoch;
once every live trial has finished epoch e, each reports its seeds' mean validation accuracy at step e,
then each is judged. A pruned trial's members leave their group: the survivors' states (weights,
optimiser state and the methods' entries, as a checkpoint holds them) are sliced out and stacked into a
smaller group, so the work per epoch drops. Batch order and dropout are drawn from (seed, epoch), so a
survivor continues exactly as it would have in the larger group (tests/search, CPU, MLP). Runs found at
different epochs (a process killed while writing an epoch) catch up first; nothing is trained twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from kdtemp.engine.loop import StepsDone
from kdtemp.events import Note, Progress
from kdtemp.group.student_group import StudentGroup
from kdtemp.store.files import is_completed, read_csv_rows, read_summary, write_summary
from kdtemp.store.loggers import run_loggers
from kdtemp.store.records import Status
from kdtemp.sweep.plan import GridCell, RunSpec, group_runs
from kdtemp.sweep.recording import SweepState, record_epoch, run_summary
from kdtemp.sweep.runner import new_group, prepare_run


@dataclass
class TrialWork:
    """One trial of a batch: its Optuna handle, its cell and its runs (one per seed)."""

    trial: optuna.Trial
    cell: GridCell
    runs: list[RunSpec]
    reported: set[int] = field(default_factory=set)
    """Steps the study holds for it already (a resumed trial's)."""
    state: TrialState = TrialState.RUNNING
    pruned_epoch: int | None = None
    judged: int = 0
    """The last epoch it was judged at in this process."""

    @property
    def live(self) -> bool:
        return self.state == TrialState.RUNNING


@dataclass
class _Active:
    """A group in training: its runs (member order), the generator of its epochs and what it holds open."""

    group: StudentGroup
    runs: list[RunSpec]
    stack: ExitStack
    loggers: list = field(default_factory=list)
    epochs: object = None

    @property
    def epoch(self) -> int:
        return self.group.completed_epochs


def epochs_done(state: SweepState, run: RunSpec) -> int:
    files = state.layout.run_files(run.run_id)
    return len(read_csv_rows(files.metrics)) if files.metrics.exists() else 0


def validation_curve(state: SweepState, runs: list[RunSpec]) -> list[float]:
    """A trial's mean validation accuracy over its seeds (`runs`) after each epoch all of them finished."""
    per_run = []
    for run in runs:
        files = state.layout.run_files(run.run_id)
        rows = read_csv_rows(files.metrics) if files.metrics.exists() else []
        per_run.append([float(row["val_acc"]) if row.get("val_acc") else math.nan for row in rows])
    length = min(len(curve) for curve in per_run)
    return [sum(curve[e] for curve in per_run) / len(per_run) for e in range(length)]


class LockstepBatch:
    """Train `works` (trials whose runs the caller has locked) to the end or to their pruning."""

    def __init__(
        self,
        state: SweepState,
        study: optuna.Study,
        works: list[TrialWork],
        across_seeds: bool,
        limit: int | None,
        extra: Sequence[RunSpec] = (),
    ):
        self.state, self.study, self.works = state, study, works
        self.extra = list(extra)
        """Runs trained in the batch's groups to the full budget and never judged (the no-KD baseline)."""
        self.across_seeds, self.limit = across_seeds, limit
        self.epochs = state.student_spec.epochs
        self.active: list[_Active] = []
        self.trial_of = {run.run_id: work for work in works for run in work.runs}

    # -- setting up --

    def _start(self) -> None:
        by_epoch: dict[int, list[tuple[RunSpec, dict | None]]] = {}
        for work in self.works:
            summaries = [read_summary(self.state.layout.run_dir(run.run_id)) for run in work.runs]
            pruned = [s.pruned_epoch for s in summaries if s is not None and s.status == Status.PRUNED]
            if pruned:  # a process died while pruning it: finish that
                self._prune(work, int(pruned[0] or 0), leave=False)
                continue
            for run, summary in zip(work.runs, summaries, strict=True):
                if summary is not None and summary.status in (Status.COMPLETED, Status.FAILED):
                    continue  # finished before (by a sweep, or this search): read, not trained
                resume = prepare_run(self.state, run)
                epoch = int(resume["member"]["epoch"]) if resume else 0
                by_epoch.setdefault(epoch, []).append((run, resume))
        for run in self.extra:
            if not is_completed(self.state.layout.run_dir(run.run_id)):
                resume = prepare_run(self.state, run)
                by_epoch.setdefault(int(resume["member"]["epoch"]) if resume else 0, []).append((run, resume))
        for members in by_epoch.values():
            resumes = {run.run_id: resume for run, resume in members}
            for runs in group_runs([run for run, _ in members], self.limit, self.across_seeds):
                states = [_member(resumes[run.run_id]) for run in runs]
                self.active.append(self._open(runs, states))

    def _open(self, runs: list[RunSpec], states: Sequence[dict | None]) -> _Active:
        group = new_group(self.state, runs, states)
        stack = ExitStack()
        stack.enter_context(group)
        directories = [self.state.layout.tensorboard_dir(run.run_id) for run in runs]
        loggers = stack.enter_context(run_loggers(self.state.config, directories))
        active = _Active(group, runs, stack, loggers)
        active.epochs = group.run(self.state.should_stop)
        return active

    def _close(self, active: _Active) -> None:
        active.epochs.close()  # type: ignore[attr-defined]
        active.stack.close()

    # -- the loop --

    def run(self) -> None:
        try:
            self._start()
            while any(work.live for work in self.works) or self.active:
                at = self._common_epoch()
                if at is not None:
                    self._judge(at)
                    continue
                self._advance()
        finally:
            for active in self.active:
                self._close(active)
            self.active = []

    def _run_epochs(self) -> dict[str, int]:
        epochs = {}
        for work in self.works:
            for run in work.runs:
                epochs[run.run_id] = epochs_done(self.state, run)
        return epochs

    def _common_epoch(self) -> int | None:
        """The epoch to judge the live trials at: the one all their runs have finished, when they stand at
        the same one and it is not judged yet; None when some must train on first."""
        done = self._run_epochs()
        live = [work for work in self.works if work.live]
        epochs = {done[run.run_id] for work in live for run in work.runs}
        if len(epochs) != 1:
            return None
        epoch = epochs.pop()
        return epoch if epoch > 0 and any(work.judged < epoch for work in live) else None

    def _advance(self) -> None:
        """One epoch of the groups furthest behind."""
        if not self.active:
            stuck = [work.trial.number for work in self.works if work.live]
            raise RuntimeError(f"trials {stuck} have no run left to train; their runs' files were changed")
        lowest = min(active.epoch for active in self.active)
        for active in [a for a in self.active if a.epoch == lowest]:
            goes_on = False
            for event in active.epochs:  # type: ignore[attr-defined]
                if isinstance(event, StepsDone):
                    self.state.emit(
                        Progress("batches", f"epoch {event.epoch + 1}", event.step, event.steps_per_epoch)
                    )
                    continue
                record_epoch(self.state, active.group, active.runs, event, active.loggers)
                for k in event.failures:  # may re-stack `active` without the failed trial's members
                    if active.runs[k].run_id in self.trial_of:
                        self._fail(self.trial_of[active.runs[k].run_id], event.failures[k])
                goes_on = active.epoch < self.epochs and len(active.group.failed) < len(active.runs)
                break
            if not goes_on and active in self.active:  # the last epoch done, or every member failed
                self._close(active)
                self.active.remove(active)

    # -- judging --

    def _judge(self, epoch: int) -> None:
        live = [work for work in self.works if work.live]
        for work in live:
            curve = validation_curve(self.state, work.runs)
            for step in range(1, epoch + 1):
                if step not in work.reported:
                    work.trial.report(curve[step - 1], step)
                    work.reported.add(step)
            work.judged = epoch
        pruned = []
        for work in live:
            if epoch >= self.epochs:
                value = validation_curve(self.state, work.runs)[self.epochs - 1]
                self.study.tell(work.trial, value)
                work.state = TrialState.COMPLETE
            elif work.trial.should_prune():
                pruned.append(work)
        for work in pruned:
            self._prune(work, epoch)
        if pruned:
            kept = [work for work in live if work.live]
            self.state.emit(
                Note(
                    f"epoch {epoch}: pruned {len(pruned)} of {len(live)} trials; "
                    f"{len(kept)} go on ({', '.join(describe(w.cell) for w in kept[:6])}"
                    f"{', ...' if len(kept) > 6 else ''})"
                )
            )
        self.state.emit(Progress("epochs", "search epochs", epoch, self.epochs))

    def _prune(self, work: TrialWork, epoch: int, leave: bool = True) -> None:
        """Its runs end as pruned (summary.json, checkpoints removed), then leave their groups."""
        for run in work.runs:
            files = self.state.layout.run_files(run.run_id)
            write_summary(
                files, run_summary(self.state, run, files, Status.PRUNED, len(work.runs), pruned_epoch=epoch)
            )
            files.checkpoint.unlink(missing_ok=True)
        work.state, work.pruned_epoch = TrialState.PRUNED, epoch
        self.study.tell(work.trial, state=TrialState.PRUNED)
        if leave:
            self._leave({run.run_id for run in work.runs})

    def _fail(self, work: TrialWork, reason: str) -> None:
        """A diverged seed fails its trial: its other seeds stop too (their checkpoints stay)."""
        if not work.live:
            return
        work.state = TrialState.FAIL
        self.study.tell(work.trial, state=TrialState.FAIL)
        self.state.emit(
            Note(f"trial {work.trial.number} ({describe(work.cell)}) failed: {reason}", "warning")
        )
        self._leave({run.run_id for run in work.runs})

    def _leave(self, run_ids: set[str]) -> None:
        for active in [a for a in self.active if any(run.run_id in run_ids for run in a.runs)]:
            self._drop(active, run_ids)

    def _drop(self, active: _Active, run_ids: set[str]) -> None:
        """Slice the members not in `run_ids` out of `active` and stack them into a new group."""
        keep = [
            k
            for k, run in enumerate(active.runs)
            if run.run_id not in run_ids and k not in active.group.failed
        ]
        states = [active.group.member_state(k) for k in keep]
        runs = [active.runs[k] for k in keep]
        self._close(active)
        self.active.remove(active)
        if runs:
            self.active.append(self._open(runs, states))


def _member(resume: dict | None) -> dict | None:
    return resume["member"] if resume is not None else None


def describe(cell: GridCell) -> str:
    return f"{cell.label} T={cell.t0:.3g} alpha {cell.alpha:g}"
