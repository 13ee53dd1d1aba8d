"""A batch of trials trained as lockstep groups, judged together at each epoch and pruned in place.

Every trial's runs are sweep runs (same ids, files and checkpoints). The batch advances epoch by epoch;
once every live trial has finished epoch e, each reports its seeds' mean validation accuracy at step e,
then each is judged. A pruned trial's members leave their group: the survivors' states (weights,
optimiser state and the methods' entries, as a checkpoint holds them) are sliced out and stacked into a
smaller group, so the work per epoch drops. Batch order and dropout are drawn from (seed, epoch), so a
survivor continues exactly as it would have in the larger group (tests/search, CPU, MLP). Runs that
train identically so far share one member until their temperatures part (kdtemp.search.shared_prefix).
Runs found at different epochs (a process killed while writing an epoch) catch up first; nothing is
trained twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from kdtemp.engine.loop import Member, StepsDone, steps_per_epoch
from kdtemp.events import Note, Progress
from kdtemp.group.student_group import StudentGroup
from kdtemp.search.pruning import TRAINED_AS
from kdtemp.search.shared_prefix import slots, training_digests
from kdtemp.store.files import is_completed, read_csv_rows, read_summary, write_summary
from kdtemp.store.loggers import run_loggers
from kdtemp.store.records import Status
from kdtemp.store.shared_epochs import record_shared, shared_epochs
from kdtemp.sweep.plan import GridCell, RunSpec, group_runs
from kdtemp.sweep.recording import SweepState, record_epoch, run_summary
from kdtemp.sweep.runner import member_for, new_group, prepare_run


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
    """A group in training: its slots, the generator of its epochs and what it holds open."""

    group: StudentGroup
    slots: list[list[RunSpec]]
    """Member k's runs: the first is the one trained, the others have trained identically so far."""
    stack: ExitStack
    loggers: list = field(default_factory=list)
    """One per run, in `runs` order."""
    epochs: object = None

    @property
    def epoch(self) -> int:
        return self.group.completed_epochs

    @property
    def runs(self) -> list[RunSpec]:
        return [run for slot in self.slots for run in slot]

    @property
    def members(self) -> list[int]:
        """The group member of each run, in `runs` order."""
        return [k for k, slot in enumerate(self.slots) for _ in slot]


def run_rows(state: SweepState, run: RunSpec) -> list[dict[str, str]]:
    """`run`'s metrics.csv rows, none before its first epoch."""
    files = state.layout.run_files(run.run_id)
    return read_csv_rows(files.metrics) if files.metrics.exists() else []


def epochs_done(state: SweepState, run: RunSpec) -> int:
    return len(run_rows(state, run))


def trained_epochs(state: SweepState, run: RunSpec) -> int:
    """Epochs of `run` trained by its own member: those recorded, less those another run's member trained."""
    done = epochs_done(state, run)
    return done - shared_epochs(state.layout.run_files(run.run_id), done)


def validation_curve(state: SweepState, runs: list[RunSpec]) -> list[float]:
    """A trial's mean validation accuracy over its seeds (`runs`) after each epoch all of them finished."""
    per_run = []
    for run in runs:
        rows = run_rows(state, run)
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
        config = state.config
        self.steps_per_epoch = steps_per_epoch(len(state.data.train_y), config.student_batch_size())
        self._members: dict[str, Member] = {}

    def member(self, run: RunSpec) -> Member:
        """What the engine trains `run` with (its temperature per step), to find runs that share."""
        if run.run_id not in self._members:
            self._members[run.run_id] = member_for(run, self.epochs, self.steps_per_epoch)
        return self._members[run.run_id]

    # -- setting up --

    def _start(self) -> None:
        by_epoch: dict[int, list[tuple[RunSpec, dict | None]]] = {}
        for work in self.works:
            summaries = [read_summary(self.state.layout.run_dir(run.run_id)) for run in work.runs]
            pruned = [s.pruned_epoch for s in summaries if s is not None and s.status == Status.PRUNED]
            if pruned:  # a process died while pruning it: finish that
                self._prune(work, int(pruned[0] or 0), leave=False)
                continue
            failed = [s.reason for s in summaries if s is not None and s.status == Status.FAILED]
            if failed:  # one of its seeds diverged before
                self._fail(work, str(failed[0]))
                continue
            for run in work.runs:
                if is_completed(self.state.layout.run_dir(run.run_id)):
                    continue  # finished before (by a sweep, or this search): read, not trained
                self._prepare(run, by_epoch)
        for run in self.extra:
            if not is_completed(self.state.layout.run_dir(run.run_id)):
                self._prepare(run, by_epoch)
        for epoch, members in by_epoch.items():
            resumes = {run.run_id: resume for run, resume in members}
            runs = [run for run, _ in members]
            # runs identical through the epoch they train next share a member (their states are equal)
            shared = slots(runs, [self.member(run) for run in runs], epoch, self.steps_per_epoch)
            slot_of = {slot[0].run_id: slot for slot in shared}
            for trained in group_runs([slot[0] for slot in shared], self.limit, self.across_seeds):
                states = [_member(resumes[run.run_id]) for run in trained]
                self.active.append(self._open([slot_of[run.run_id] for run in trained], states))

    def _prepare(self, run: RunSpec, by_epoch: dict[int, list[tuple[RunSpec, dict | None]]]) -> None:
        resume = prepare_run(self.state, run)
        epoch = int(resume["member"]["epoch"]) if resume else 0
        by_epoch.setdefault(epoch, []).append((run, resume))

    def _open(self, slots: list[list[RunSpec]], states: Sequence[dict | None]) -> _Active:
        group = new_group(self.state, [slot[0] for slot in slots], states)
        active = _Active(group, slots, ExitStack())
        directories = [self.state.layout.tensorboard_dir(run.run_id) for run in active.runs]
        active.loggers = active.stack.enter_context(run_loggers(self.state.config, directories))
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
                at = self._epoch_to_judge()
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

    def _epoch_to_judge(self) -> int | None:
        """The epoch the live trials furthest behind have all finished, when they are not judged at it
        yet; None when the groups must train on first. Trials ahead (runs a sweep or a killed process
        took further) wait, and report their values before anyone is judged."""
        done = self._run_epochs()
        live = [work for work in self.works if work.live]
        if not live:
            return None
        at = {work.trial.number: min(done[run.run_id] for run in work.runs) for work in live}
        lowest = min(at.values())
        behind = [work for work in live if at[work.trial.number] == lowest]
        return lowest if lowest > 0 and any(work.judged < lowest for work in behind) else None

    def _advance(self) -> None:
        """One epoch of the groups furthest behind."""
        if not self.active:
            stuck = [work.trial.number for work in self.works if work.live]
            raise RuntimeError(f"trials {stuck} have no run left to train; their runs' files were changed")
        lowest = min(active.epoch for active in self.active)
        for active in [a for a in self.active if a.epoch == lowest]:
            self._part(active)
        for active in [a for a in self.active if a.epoch == lowest]:
            if active not in self.active:  # re-stacked when another group's member failed this epoch
                continue
            goes_on = False
            # the group's hooks (a hint's, on the shared teachers) only while it trains: other open groups
            # would capture features they never read
            with active.group:
                event = self._next_epoch(active)
            if event is not None:
                # the ledger first: a process killed in between counts the epoch as shared, and a rider
                # whose row was not written yet resumes before it (prepare_run forgets the entry)
                self._record_shared(active, event)
                record_epoch(self.state, active.group, active.runs, event, active.loggers, active.members)
                goes_on = active.epoch < self.epochs and len(active.group.failed) < len(active.slots)
                failed = {
                    run.run_id: reason
                    for k, reason in event.failures.items()
                    for run in active.slots[k]
                    if run.run_id in self.trial_of
                }
                # may re-stack `active` without the failed trials' members
                for run_id, reason in failed.items():
                    self._fail(self.trial_of[run_id], reason)
            if not goes_on and active in self.active:  # the last epoch done, or every member failed
                self._close(active)
                self.active.remove(active)

    def _part(self, active: _Active) -> None:
        """Re-stack `active` when runs that share a member part at the epoch it trains next: the
        member's state is copied into each part (in groups of at most the group limit)."""
        epoch = active.epoch
        parted = [
            slots(slot, [self.member(run) for run in slot], epoch, self.steps_per_epoch, start_epoch=epoch)
            for slot in active.slots
        ]
        if all(len(parts) == 1 for parts in parted):
            return
        slot_of, states = {}, {}
        for k, parts in enumerate(parted):
            if k in active.group.failed:
                continue
            state = active.group.member_state(k)
            for part in parts:
                slot_of[part[0].run_id], states[part[0].run_id] = part, state
        self._close(active)
        self.active.remove(active)
        leaders = [slot[0] for slot in slot_of.values()]
        for chunk in group_runs(leaders, self.limit, self.across_seeds):
            chunk_slots = [slot_of[run.run_id] for run in chunk]
            self.active.append(self._open(chunk_slots, [states[run.run_id] for run in chunk]))

    def _record_shared(self, active: _Active, event) -> None:
        """The runs recorded from another's member this epoch: the budget does not count them."""
        for k, slot in enumerate(active.slots):
            if k in event.failures or event.metrics[k] is None:
                continue
            for run in slot[1:]:
                record_shared(self.state.layout.run_files(run.run_id), event.epoch, slot[0].run_id)

    def _next_epoch(self, active: _Active):
        """Train `active` one epoch: its EpochDone, or None when its generator has ended."""
        for event in active.epochs:  # type: ignore[attr-defined]
            if isinstance(event, StepsDone):
                self.state.emit(
                    Progress("batches", f"epoch {event.epoch + 1}", event.step, event.steps_per_epoch)
                )
                continue
            return event
        return None

    # -- judging --

    def _judge(self, epoch: int) -> None:
        """Every live trial reports what it has, then those at `epoch` are judged (or told complete)."""
        live = [work for work in self.works if work.live]
        curves = {work.trial.number: validation_curve(self.state, work.runs) for work in live}
        for work in live:
            digests = training_digests([run_rows(self.state, run) for run in work.runs])
            for step in range(1, len(curves[work.trial.number]) + 1):
                if step not in work.reported:
                    # first the digest: the pruner tells trials that trained identically by it
                    work.trial.set_user_attr(f"{TRAINED_AS}{step}", digests[step - 1])
                    work.trial.report(curves[work.trial.number][step - 1], step)
                    work.reported.add(step)
        judged = [work for work in live if len(curves[work.trial.number]) == epoch]
        pruned = []
        for work in judged:
            work.judged = epoch
            if epoch >= self.epochs:
                self.study.tell(work.trial, curves[work.trial.number][self.epochs - 1])
                work.state = TrialState.COMPLETE
            elif work.trial.should_prune():
                pruned.append(work)
        for work in pruned:
            self._prune(work, epoch, leave=False)
        if pruned:  # every pruned trial's members leave at once: one re-stack per group and rung
            self._leave({run.run_id for work in pruned for run in work.runs})
            kept = [work for work in judged if work.live]
            self.state.emit(
                Note(
                    f"epoch {epoch}: pruned {len(pruned)} of {len(judged)} trials; "
                    f"{len(kept)} {'goes' if len(kept) == 1 else 'go'} on "
                    f"({', '.join(describe(w.cell) for w in kept[:6])}"
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
        """Slice the members whose runs are all in `run_ids` out of `active` and stack the rest into a
        new group; a member whose trained run leaves goes on training for the runs that stay."""
        kept, states = [], []
        for k, slot in enumerate(active.slots):
            staying = [run for run in slot if run.run_id not in run_ids]
            if staying and k not in active.group.failed:
                kept.append(staying)
                states.append(active.group.member_state(k))
        self._close(active)
        self.active.remove(active)
        if kept:
            self.active.append(self._open(kept, states))


def _member(resume: dict | None) -> dict | None:
    return resume["member"] if resume is not None else None


def describe(cell: GridCell) -> str:
    return f"{cell.label} T={cell.t0:.3g} alpha {cell.alpha:g}"
