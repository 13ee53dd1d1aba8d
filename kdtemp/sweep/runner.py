"""The `kdtemp sweep` job: distil one student per (schedule, t0, seed), plus a no-KD baseline per seed.

Every check a user's input can fail is made before the first run directory is created, so a refused
command leaves nothing half-written. Finished runs are skipped, interrupted ones resume from their
last epoch, and runs another process holds are left to it. Born-again generations train one after
another, each distilled from the previous generation's students (kdtemp.sweep.generations).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import cast

import torch
from filelock import FileLock
from torch import nn

from kdtemp.config.schema import ExperimentConfig, config_to_dict
from kdtemp.data.dataset import Dataset
from kdtemp.engine.evaluation import inference_module
from kdtemp.engine.job_setup import (
    StopCheck,
    environment_record,
    loop_settings,
    per_batch_teachers,
)
from kdtemp.engine.loop import Member, StepsDone, TeacherSignal, steps_per_epoch
from kdtemp.engine.randomness import caller_rng_kept
from kdtemp.errors import CheckpointError
from kdtemp.events import Emit, Note, Progress, SweepResult, ignore
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.features import Hint
from kdtemp.models.registry import build_model
from kdtemp.store.files import (
    atomic_write_json,
    atomic_write_yaml,
    check_writable,
    is_completed,
    keep_epochs_before,
    load_checkpoint,
)
from kdtemp.store.layout import ExperimentLayout
from kdtemp.store.locks import RunLock, owner_record
from kdtemp.store.loggers import run_loggers
from kdtemp.store.records import STUDENT_COLUMNS
from kdtemp.store.shared_epochs import forget_shared
from kdtemp.sweep.experiment import PreparedExperiment, prepare_experiment
from kdtemp.sweep.generations import (
    generation_hint,
    parent_signal,
    with_finished_parents,
)
from kdtemp.sweep.plan import (
    RunSpec,
    group_runs,
    learnable_schedule,
    plan_runs,
    same_curve_cells,
    uses_standardized_logits,
)
from kdtemp.sweep.recording import STUDENT_FORMAT, SweepState, record_epoch
from kdtemp.teachers.loading import (
    LoadedTeacher,
    all_teacher_logits,
    ensemble_weights,
    teacher_features,
)
from kdtemp.temperature.base import LOW_TEMPERATURE, ScheduleBase, temperature_table


def plan_sweep(config: ExperimentConfig, data: Dataset, fingerprint: str) -> tuple[list[RunSpec], list[Note]]:
    """The grid's runs, and a warning when any schedule goes below T = 0.5."""
    runs = plan_runs(config, fingerprint)
    spe = steps_per_epoch(len(data.train_y), config.student_batch_size())
    # each distinct schedule and t0 once: seeds and generations share their temperatures
    cells = {(run.schedule_label, run.t0): run.schedule for run in runs if not run.is_baseline}
    low = sorted(
        {
            label
            for (label, t0), schedule in cells.items()
            # a distilled run has a schedule and a t0 (plan.plan_runs)
            if cast(ScheduleBase, schedule).lowest(cast(float, t0), config.student.epochs, spe)
            < LOW_TEMPERATURE
        }
    )
    notes = []
    if low:
        notes.append(
            Note(
                f"temperatures below {LOW_TEMPERATURE} in {', '.join(low)}: soft targets become nearly "
                "one-hot and gradients grow as 1/T",
                "warning",
            )
        )
    return runs, notes


def record_same_curves(layout: ExperimentLayout, config: ExperimentConfig, emit: Emit = ignore) -> None:
    """Add the grid's cells that share another schedule's runs to same_curves.json (kept across sweeps, so
    the report shows them under each label), and say which ones are trained once."""
    repeats = same_curve_cells(config)
    if not repeats:
        return
    emit(
        Note(
            "same temperature curve, trained once: "
            + "; ".join(f"{r.schedule} T={r.t0:g} = {r.same_as} T={r.t0:g}" for r in repeats)
        )
    )
    entries = [
        {
            "schedule": r.schedule,
            "same_as": r.same_as,
            "t0": r.t0,
            "alpha": r.alpha,
            "epochs": config.student.epochs,
        }
        for r in repeats
    ]
    layout.root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(layout.same_curves) + ".lock"):
        known = json.loads(layout.same_curves.read_text()) if layout.same_curves.exists() else []
        merged = known + [entry for entry in entries if entry not in known]
        if merged != known:
            atomic_write_json(layout.same_curves, merged)


def member_for(run: RunSpec, epochs: int, spe: int) -> Member:
    if run.is_baseline:
        return Member(seed=run.seed, alpha=0.0, temperatures=torch.ones(epochs * spe), distills=False)
    assert run.schedule is not None and run.t0 is not None  # a distilled run has both (plan.plan_runs)
    return Member(
        seed=run.seed,
        alpha=run.alpha,
        temperatures=temperature_table(run.schedule, run.t0, epochs, spe),
        t0=run.t0,
        standardize=uses_standardized_logits(run),
        learnable=learnable_schedule(run),
        methods=tuple(method["name"] for method in run.identity.get("methods", [])),
    )


def run_config_record(run: RunSpec, config: ExperimentConfig, device: torch.device) -> dict:
    schedule = run.schedule.model_dump(mode="json") if run.schedule is not None else None
    return {
        "run": {
            "run_id": run.run_id,
            "schedule": run.schedule_label,
            "schedule_params": schedule,
            "t0": run.t0,
            "alpha": run.alpha,
            "seed": run.seed,
            "generation": run.generation,
            "parent": run.parent,
        },
        "identity": run.identity,
        "experiment": config_to_dict(config),
        "environment": environment_record(device),
    }


def sweep(
    config: ExperimentConfig,
    force: bool = False,
    should_stop: StopCheck = None,
    only: set[str] | None = None,
    worker: str | None = None,
    emit: Emit = ignore,
) -> SweepResult:
    """Train the grid's runs (only those in `only` when given), reporting progress through `emit`."""
    started_at = time.perf_counter()
    experiment = prepare_experiment(config, emit)
    layout, data = experiment.layout, experiment.data
    runs, notes = plan_sweep(config, data, experiment.teacher_fingerprint)
    for note in notes:
        emit(note)
    record_same_curves(layout, config, emit)
    if only is not None:
        runs = [run for run in runs if run.run_id in only]
    pending = [run for run in runs if force or not is_completed(layout.run_dir(run.run_id))]
    skipped = len(runs) - len(pending)
    emit(Note(f"{len(runs)} runs planned: {skipped} already complete, {len(pending)} to train"))
    if not pending:
        return SweepResult(
            len(runs), skipped, 0, 0, 0, seconds=time.perf_counter() - started_at, experiment_dir=layout.root
        )
    check_writable(layout.root)
    state = sweep_state(experiment, force, should_stop, worker, len(pending), emit)
    limit = experiment.group_limit()
    across_seeds = experiment.seeds_can_share_a_group
    for generation in sorted({run.generation for run in pending}):
        members = [run for run in pending if run.generation == generation]
        if generation > 1:
            members = with_finished_parents(state, members)
        groups = group_runs(members, limit, across_seeds)
        for number, group in enumerate(groups, 1):
            label = f"group {number}/{len(groups)}" + (
                f", generation {generation}" if config.kd.generations > 1 else ""
            )
            train_group(state, group, label)
    return SweepResult(
        len(runs),
        skipped,
        state.resumed,
        state.started,
        state.completed,
        state.failed,
        state.busy,
        time.perf_counter() - started_at,
        layout.root,
    )


def sweep_state(
    experiment: PreparedExperiment,
    force: bool,
    should_stop: StopCheck,
    worker: str | None,
    pending: int,
    emit: Emit,
) -> SweepState:
    """What every group shares: the prepared experiment with its teacher signal (computed here, once)."""
    config = experiment.config
    signal = teacher_signal(
        config, experiment.data, experiment.device, experiment.teachers, experiment.hint, emit
    )
    return SweepState(
        config,
        experiment.layout,
        experiment.data,
        experiment.device,
        experiment.teachers,
        signal,
        experiment.hint,
        experiment.sizes(),
        force,
        should_stop,
        worker,
        pending,
        stackable=experiment.stackable(emit),
        emit=emit,
    )


def teacher_signal(
    config: ExperimentConfig,
    data: Dataset,
    device: torch.device,
    teachers: list[LoadedTeacher],
    hint: Hint | None,
    emit: Emit,
) -> TeacherSignal:
    """Generation 1's teacher signal: cached logits (and hint features), or networks run on each batch."""
    logits = all_teacher_logits(teachers, data, config, device, emit)
    train = logits.train
    teacher_layer = config.kd.feature_layers.teacher if config.kd.feature_layers else None
    networks: tuple[nn.Module, ...]
    features, networks, channels_last = None, (), False
    if train is not None and hint is not None:
        emit(Note("computing the teachers' hint features on the training set"))
        features = teacher_features([t.model for t in teachers], teacher_layer, data, config, device)
    if train is None:
        example = data.train_x[: config.student_batch_size()]
        # hints are captured with hooks, which need the eager modules
        networks, channels_last = per_batch_teachers(
            [t.model if hint is not None else inference_module(t.model, example, device) for t in teachers],
            device,
        )
    return TeacherSignal(
        test_logits=logits.test,
        val_logits=logits.val,
        train_logits=train,
        train_features=features,
        networks=networks,
        ensemble=config.kd.ensemble,
        weights=ensemble_weights(config, device),
        feature_layer=teacher_layer,
        channels_last=channels_last,
    )


# --- training a group ------------------------------------------------------------------------------


def prepare_run(state: SweepState, run: RunSpec) -> dict | None:
    """Clear or keep a run's files for (re)training; returns its checkpoint state when it resumes."""
    files = state.layout.run_files(run.run_id)
    resume = None
    if not state.force and files.checkpoint.exists():
        try:
            resume = load_checkpoint(files.checkpoint, "student checkpoint")
            if resume.get("format") != STUDENT_FORMAT or resume.get("run_id") != run.run_id:
                resume = None
        except CheckpointError as exc:
            state.emit(Note(f"{exc}; restarting {run.run_id}", "warning"))
            resume = None
    for stale in (files.summary, files.model):
        stale.unlink(missing_ok=True)
    if resume is None:
        files.checkpoint.unlink(missing_ok=True)
        files.metrics.unlink(missing_ok=True)
    else:
        keep_epochs_before(files.metrics, int(resume["member"]["epoch"]), STUDENT_COLUMNS)
    forget_shared(files, int(resume["member"]["epoch"]) if resume else 0)  # its rows from there are gone
    atomic_write_yaml(files.config, run_config_record(run, state.config, state.device))
    return resume


def train_group(state: SweepState, group: list[RunSpec], label: str) -> None:
    locks = {}
    try:
        mine = []
        for run in group:
            lock = RunLock(state.layout.lock_path(run.run_id))
            if not lock.acquire():
                state.busy.append(run.run_id)
                state.emit(Note(f"{run.run_id} is being trained by another process; leaving it to that one"))
                continue
            if not state.force and is_completed(state.layout.run_dir(run.run_id)):
                lock.release()  # finished by another process since we planned
                continue
            # say who holds it at once, so `kdtemp status` can name the worker or job
            atomic_write_json(state.layout.run_files(run.run_id).owner, owner_record(state.worker))
            locks[run.run_id] = lock
            mine.append(run)
        by_epoch: dict[int, list] = {}
        for run in mine:
            resume = prepare_run(state, run)
            epoch = int(resume["member"]["epoch"]) if resume else 0
            by_epoch.setdefault(epoch, []).append((run, resume))
            if resume:
                state.resumed += 1
            else:
                state.started += 1
        for _, members in sorted(by_epoch.items()):
            _train_members(state, members, label)
    finally:
        for lock in locks.values():
            lock.release()


def new_group(state: SweepState, runs: list[RunSpec], resumes: Sequence[dict | None]) -> StudentGroup:
    """A lockstep group of `runs` (one generation), restored from their member states when given (all at
    one epoch: a group resumes from one epoch, its members all have a state, or none has)."""
    config, data, spec = state.config, state.data, state.student_spec
    spe = steps_per_epoch(len(data.train_y), config.student_batch_size())
    seeds = sorted({run.seed for run in runs})
    generation = runs[0].generation
    signal = state.signal if generation == 1 else parent_signal(state, runs)
    with caller_rng_kept():  # the group seeds each member's init itself; a hint's shape probe draws too
        group = StudentGroup(
            lambda: build_model(spec, data.input_shape, data.num_classes, data.vocab_size),
            [member_for(run, spec.epochs, spe) for run in runs],
            data,
            signal,
            loop_settings(config, spec, seeds[0], state.device),
            generation_hint(state, generation),
            stackable=state.stackable,
        )
    if resumes and resumes[0] is not None:
        group.load_member_states(cast(list[dict], resumes))
    return group


def _train_members(state: SweepState, members: list[tuple[RunSpec, dict | None]], label: str) -> None:
    config, data, spec, emit = state.config, state.data, state.student_spec, state.emit
    spe = steps_per_epoch(len(data.train_y), config.student_batch_size())
    runs = [run for run, _ in members]
    seeds = sorted({run.seed for run in runs})
    group = new_group(state, runs, [resume["member"] if resume else None for _, resume in members])
    description = (
        f"{label}: {len(runs)} runs at once "
        f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    )
    emit(Progress("runs", "runs", state.done, state.pending))
    emit(Progress("epochs", description, group.completed_epochs, spec.epochs))
    directories = [state.layout.tensorboard_dir(run.run_id) for run in runs]
    # the group's hint hooks on the shared teachers end with it; the loggers flush however the block ends
    with group, run_loggers(config, directories) as loggers:
        for event in group.run(state.should_stop):
            if isinstance(event, StepsDone):
                emit(Progress("batches", f"epoch {event.epoch + 1}", event.step, event.steps_per_epoch))
                continue
            record_epoch(state, group, runs, event, loggers)
            emit(Progress("batches", f"epoch {event.epoch + 1}", spe, spe))
            emit(Progress("epochs", description, event.epoch + 1, spec.epochs))
    state.done += len(runs)
    emit(Progress("runs", "runs", state.done, state.pending))
