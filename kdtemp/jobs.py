"""The jobs a user runs: train the teacher, sweep the students.

Glue between config, data, models, the engine and run storage; callable from a notebook
(`for event in sweep(load_config(path)): ...`). Every check a user's input can fail is made before
the first run directory is created, so a refused command leaves nothing half-written.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

import kdtemp
from kdtemp import runs as R
from kdtemp.config import ExperimentConfig, architecture_of, config_to_dict
from kdtemp.data import Dataset, load_dataset
from kdtemp.device import amp_enabled, max_group_size, member_bytes, resolve_device
from kdtemp.engine import (
    EpochDone, LoopSettings, Member, NetworkTrainer, StepsDone, StudentGroup, TeacherSignal,
    inference_module, predict_logits, steps_per_epoch,
)
from kdtemp.errors import CheckpointError, ConfigError
from kdtemp.events import Note, Progress, SweepResult, TeacherResult
from kdtemp.models import build_model, count_parameters, has_dropout
from kdtemp.plan import RunSpec, group_runs, learnable_schedule, plan_runs, uses_standardized_logits
from kdtemp.schedules import LOW_TEMPERATURE, lowest_temperature, temperature_table

TEACHER_FORMAT = "kdtemp-teacher/1"
STUDENT_FORMAT = "kdtemp-student/1"

StopCheck = Callable[[], bool] | None


def environment_record(device: torch.device) -> dict:
    """Versions and hardware, recorded beside every result for reproducibility."""
    record = {
        "kdtemp": kdtemp.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "device": str(device),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    return record


def _config_flag(config: ExperimentConfig) -> str:
    return "" if config.name == "default" else f" --config <your {config.name}.yaml>"


def _data_on(device: torch.device, config: ExperimentConfig) -> Iterator[Note | Dataset]:
    data = load_dataset(config.data)
    yield Note(f"{data.name}: {len(data.train_y)} train / {len(data.test_y)} test, {data.num_classes} classes, from {data.source}")
    if config.data.augment and not data.is_image:
        raise ConfigError(f"data.augment crops and flips images; {data.name} holds sequences {data.input_shape}: set augment: false")
    yield data.to(device)


def _loop_settings(config: ExperimentConfig, spec, batch_size: int, seed: int, device: torch.device, model: nn.Module | None = None) -> LoopSettings:
    has_conv = model is not None and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return LoopSettings(
        training=spec, batch_size=batch_size, eval_batch_size=config.data.eval_batch_size, seed=seed, device=device,
        augment=config.data.augment, amp=amp_enabled(config.train.amp, device),
        clip_grad_norm=config.train.clip_grad_norm, channels_last=device.type == "cuda" and has_conv,
    )


# --- teacher -----------------------------------------------------------------------------------


def train_teacher(config: ExperimentConfig, force: bool = False, should_stop: StopCheck = None) -> Iterator:
    """Train, evaluate each epoch, and checkpoint the teacher under runs/<name>/teacher/.

    A finished teacher for the same architecture and dataset is kept unless `force`; an interrupted
    one resumes from its last epoch.
    """
    layout = R.ExperimentLayout.of(config.runs_dir, config.name)
    device = resolve_device(config.device)
    if layout.teacher_model.exists() and not force:
        existing = R.load_checkpoint(layout.teacher_model, "teacher checkpoint")
        if existing.get("architecture") == architecture_of(config.teacher) and existing.get("dataset") == config.data.dataset:
            yield TeacherResult(layout.teacher_model, float(existing["test_acc"]), int(existing["parameters"]),
                                int(existing["epochs"]), 0.0, already_trained=True)
            return
        raise CheckpointError(
            f"{layout.teacher_model} holds a {existing.get('architecture', {}).get('arch')} teacher for "
            f"{existing.get('dataset')}, but the config asks for {config.teacher.arch} on {config.data.dataset}; "
            "pass --force to replace it (its students will be retrained), or use another experiment name"
        )
    R.check_writable(config.runs_dir)
    data = None
    for item in _data_on(device, config):
        if isinstance(item, Dataset):
            data = item
        else:
            yield item
    spec = config.teacher
    torch.manual_seed(spec.seed)
    model = build_model(spec, data.input_shape, data.num_classes)
    trainer = NetworkTrainer(model, data, _loop_settings(config, spec, config.teacher_batch_size(), spec.seed, device, model))
    checkpoint_path = layout.teacher_dir / "checkpoint.pt"
    metrics_path = layout.teacher_dir / "metrics.csv"
    identity = {"architecture": architecture_of(spec), "training": spec.model_dump(mode="json"), "dataset": config.data.dataset}
    if force:
        for stale in (checkpoint_path, metrics_path, layout.teacher_model):
            stale.unlink(missing_ok=True)
    elif checkpoint_path.exists():
        try:
            state = R.load_checkpoint(checkpoint_path, "teacher checkpoint")
            if state.get("identity") == identity:
                trainer.load_state(state["trainer"])
                yield Note(f"resuming the teacher from epoch {trainer.completed_epochs}")
        except CheckpointError as exc:
            yield Note(f"{exc}; training the teacher from scratch", "warning")
    if trainer.completed_epochs == 0:
        metrics_path.unlink(missing_ok=True)
    else:
        R.keep_epochs_before(metrics_path, trainer.completed_epochs, R.TEACHER_COLUMNS)
    R.atomic_write_yaml(layout.teacher_dir / "config.yaml",
                        {"experiment": config_to_dict(config), "environment": environment_record(device)})
    parameters = count_parameters(trainer.model)
    yield Note(f"teacher {spec.arch}: {parameters:,} parameters, {spec.epochs} epochs on {device}")
    started = time.perf_counter()
    last: dict = {}
    description = f"teacher {spec.arch}"
    yield Progress("epochs", description, trainer.completed_epochs, spec.epochs)
    for event in trainer.run(should_stop):
        if isinstance(event, StepsDone):
            yield Progress("batches", f"epoch {event.epoch + 1}", event.step, event.steps_per_epoch)
        elif isinstance(event, EpochDone):
            if event.failures:
                raise CheckpointError(f"teacher training diverged: {event.failures[0]}; lower teacher.lr or set train.clip_grad_norm")
            last = event.metrics[0]
            R.append_csv_row(metrics_path, last, R.TEACHER_COLUMNS)
            R.atomic_torch_save({"identity": identity, "trainer": trainer.state()}, checkpoint_path)
            yield Progress("batches", f"epoch {event.epoch + 1}", trainer.steps_per_epoch, trainer.steps_per_epoch)
            yield Progress("epochs", f"{description}  test acc {100 * last['test_acc']:.1f}%", event.epoch + 1, spec.epochs)
    if not last:  # resumed after the final epoch had already been checkpointed
        last = trainer.evaluate()
    checkpoint = {
        "format": TEACHER_FORMAT,
        "state_dict": trainer.model.state_dict(),
        "architecture": architecture_of(spec),
        "dataset": data.name,
        "data_fingerprint": data.fingerprint(),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "test_acc": float(last["test_acc"]),
        "test_loss": float(last["test_loss"]),
        "epochs": spec.epochs,
        "parameters": parameters,
        "environment": environment_record(device),
    }
    R.atomic_torch_save(checkpoint, layout.teacher_model)
    checkpoint_path.unlink(missing_ok=True)
    yield TeacherResult(layout.teacher_model, float(last["test_acc"]), parameters, spec.epochs, time.perf_counter() - started)


@dataclass(frozen=True)
class LoadedTeacher:
    model: nn.Module
    checkpoint: dict
    fingerprint: str
    path: Path


def load_teacher(config: ExperimentConfig, data: Dataset, device: torch.device) -> LoadedTeacher:
    """The experiment's trained teacher, refused when it was made for other data or another network."""
    layout = R.ExperimentLayout.of(config.runs_dir, config.name)
    path = layout.teacher_model
    if not path.exists():
        raise CheckpointError(f"no teacher at {path}; run `kdtemp train-teacher{_config_flag(config)}` first")
    checkpoint = R.load_checkpoint(path, "teacher checkpoint")
    if checkpoint.get("format") != TEACHER_FORMAT or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a kdtemp teacher checkpoint; retrain it with `kdtemp train-teacher --force`")
    check_teacher_matches(checkpoint, config, data, path)
    model = build_model(config.teacher, data.input_shape, data.num_classes)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {config.teacher.arch} ({str(exc).splitlines()[0]}); retrain with `kdtemp train-teacher --force`") from None
    return LoadedTeacher(model.to(device).eval(), checkpoint, R.file_fingerprint(path), path)


def check_teacher_matches(checkpoint: dict, config: ExperimentConfig, data: Dataset, path: Path) -> None:
    fix = "retrain it with `kdtemp train-teacher --force`, or point --runs-dir/--config at the matching experiment"
    if checkpoint.get("dataset") != data.name:
        raise CheckpointError(f"teacher {path} was trained on {checkpoint.get('dataset')}, this config uses {data.name}; {fix}")
    if checkpoint.get("num_classes") != data.num_classes:
        raise CheckpointError(f"teacher {path} predicts {checkpoint.get('num_classes')} classes, {data.name} has {data.num_classes}; {fix}")
    if list(checkpoint.get("input_shape", [])) != list(data.input_shape):
        raise CheckpointError(f"teacher {path} takes inputs of shape {checkpoint.get('input_shape')}, {data.name} gives {list(data.input_shape)}; {fix}")
    wanted = architecture_of(config.teacher)
    if checkpoint.get("architecture") != wanted:
        raise CheckpointError(f"teacher {path} is a {checkpoint.get('architecture')}, the config asks for {wanted}; {fix}")
    if checkpoint.get("data_fingerprint") not in (None, data.fingerprint()):
        raise CheckpointError(f"teacher {path} was trained on different {data.name} data (content differs); {fix}")


def teacher_logits(teacher: LoadedTeacher, data: Dataset, config: ExperimentConfig, device: torch.device) -> Iterator:
    """(train logits or None, test logits): one eval pass over each split, cached on disk.

    With augmentation the training inputs change every epoch, so only test logits are cached and
    the teacher runs on each batch instead.
    """
    layout = R.ExperimentLayout.of(config.runs_dir, config.name)
    transform = "augment" if config.data.augment else "none"
    path = layout.teacher_logits_cache(teacher.fingerprint, transform)
    data_fingerprint = data.fingerprint()
    amp = amp_enabled(config.train.amp, device)
    channels_last = device.type == "cuda" and data.is_image
    if path.exists():
        try:
            cached = R.load_checkpoint(path, "teacher-logits cache")
            if cached.get("data_fingerprint") == data_fingerprint and cached["test"].shape == (len(data.test_y), data.num_classes):
                yield Note(f"teacher logits read from cache {path.name}")
                train = cached.get("train")
                yield (train.to(device) if train is not None else None, cached["test"].to(device))
                return
        except (CheckpointError, KeyError, AttributeError):
            pass
        yield Note(f"teacher-logits cache {path.name} does not fit this data; recomputing", "warning")
    yield Note("computing teacher logits on the training set (once for the whole grid)")
    batch = config.data.eval_batch_size
    train = None if config.data.augment else predict_logits(teacher.model, data.train_x, batch, device, amp, channels_last)
    test = predict_logits(teacher.model, data.test_x, batch, device, amp, channels_last)
    R.atomic_torch_save({"data_fingerprint": data_fingerprint, "train": None if train is None else train.cpu(),
                         "test": test.cpu()}, path)
    yield (train, test)


# --- sweep -------------------------------------------------------------------------------------


def plan_sweep(config: ExperimentConfig, data: Dataset, teacher: LoadedTeacher) -> tuple[list[RunSpec], list[Note]]:
    runs = plan_runs(config, teacher.fingerprint)
    notes = []
    spe = steps_per_epoch(len(data.train_y), config.student_batch_size())
    low = sorted({run.schedule_label for run in runs if not run.is_baseline
                  and lowest_temperature(run.schedule, run.t0, config.student.epochs, spe) < LOW_TEMPERATURE})
    if low:
        notes.append(Note(
            f"temperatures below {LOW_TEMPERATURE} in {', '.join(low)}: soft targets become nearly one-hot "
            "and gradients grow as 1/T", "warning"))
    return runs, notes


def member_for(run: RunSpec, epochs: int, spe: int) -> Member:
    if run.is_baseline:
        return Member(seed=run.seed, alpha=0.0, temperatures=torch.ones(epochs * spe), distills=False)
    return Member(
        seed=run.seed, alpha=run.alpha, temperatures=temperature_table(run.schedule, run.t0, epochs, spe),
        t0=run.t0, standardize=uses_standardized_logits(run), learnable=learnable_schedule(run),
    )


def run_config_record(run: RunSpec, config: ExperimentConfig, device: torch.device) -> dict:
    schedule = run.schedule.model_dump(mode="json") if run.schedule is not None else None
    return {
        "run": {"run_id": run.run_id, "schedule": run.schedule_label, "schedule_params": schedule,
                "t0": run.t0, "alpha": run.alpha, "seed": run.seed},
        "identity": run.identity,
        "experiment": config_to_dict(config),
        "environment": environment_record(device),
    }


def sweep(config: ExperimentConfig, force: bool = False, should_stop: StopCheck = None,
          only: set[str] | None = None, worker: str | None = None) -> Iterator:
    """Distil one student per (schedule, t0, seed) plus a baseline per seed; yields progress, ends with a SweepResult.

    Finished runs are skipped (unless `force`), interrupted ones resume from their last epoch, and
    runs another process holds are left to it. `only` restricts the sweep to some run ids.
    """
    started_at = time.perf_counter()
    layout = R.ExperimentLayout.of(config.runs_dir, config.name)
    device = resolve_device(config.device)
    if not layout.teacher_model.exists():
        raise CheckpointError(f"no teacher at {layout.teacher_model}; run `kdtemp train-teacher{_config_flag(config)}` first")
    data = None
    for item in _data_on(device, config):
        if isinstance(item, Dataset):
            data = item
        else:
            yield item
    teacher = load_teacher(config, data, device)
    runs, notes = plan_sweep(config, data, teacher)
    yield from notes
    if only is not None:
        runs = [run for run in runs if run.run_id in only]
    pending = [run for run in runs if force or not R.is_completed(layout.run_dir(run.run_id))]
    skipped = len(runs) - len(pending)
    yield Note(f"{len(runs)} runs planned: {skipped} already complete, {len(pending)} to train")
    if not pending:
        yield SweepResult(len(runs), skipped, 0, 0, 0, seconds=time.perf_counter() - started_at, experiment_dir=layout.root)
        return
    R.check_writable(layout.root)
    train_logits, test_logits = None, None
    for item in teacher_logits(teacher, data, config, device):
        if isinstance(item, tuple):
            train_logits, test_logits = item
        else:
            yield item
    signal = TeacherSignal(
        test_logits=test_logits[None],
        train_logits=None if train_logits is None else train_logits[None],
        networks=() if train_logits is not None else
        (inference_module(teacher.model, data.train_x[:config.student_batch_size()], device),),
    )
    state = _SweepState(len(runs), skipped)
    sizes = {"student_params": count_parameters(build_model(config.student, data.input_shape, data.num_classes)),
             "teacher_params": int(teacher.checkpoint.get("parameters") or count_parameters(teacher.model))}
    group_limit = _group_limit(config, data, device)
    student_probe = build_model(config.student, data.input_shape, data.num_classes)
    groups = group_runs(pending, group_limit, across_seeds=train_logits is not None and not has_dropout(student_probe))
    done_runs = 0
    for number, group in enumerate(groups, 1):
        yield from _train_group(config, layout, data, signal, group, device, force, should_stop, worker, state,
                                f"group {number}/{len(groups)}", done_runs, len(pending), sizes)
        done_runs += len(group)
    yield SweepResult(len(runs), skipped, state.resumed, state.started, state.completed, state.failed, state.busy,
                      time.perf_counter() - started_at, layout.root)


@dataclass
class _SweepState:
    planned: int
    skipped: int
    resumed: int = 0
    started: int = 0
    completed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


def _group_limit(config: ExperimentConfig, data: Dataset, device: torch.device) -> int:
    spec = config.student
    probe = build_model(spec, data.input_shape, data.num_classes).to(device)
    batch = data.train_x[: config.student_batch_size()]
    slots = {"sgd": 1, "adam": 2, "adamw": 2}[spec.optimizer]
    return max_group_size(member_bytes(probe, batch, slots), 0, device, config.train.max_group_size)


def _prepare_run(run: RunSpec, layout: R.ExperimentLayout, config: ExperimentConfig, device: torch.device,
                 force: bool, worker: str | None) -> tuple[dict | None, list[Note]]:
    """Clear or keep a run's files for (re)training; returns its checkpoint state when it resumes."""
    files = R.RunFiles(layout.run_dir(run.run_id))
    notes: list[Note] = []
    state = None
    if not force and files.checkpoint.exists():
        try:
            state = R.load_checkpoint(files.checkpoint, "student checkpoint")
            if state.get("format") != STUDENT_FORMAT or state.get("run_id") != run.run_id:
                state = None
        except CheckpointError as exc:
            notes.append(Note(f"{exc}; restarting {run.run_id}", "warning"))
            state = None
    for stale in (files.summary, files.dir / "model.pt"):
        stale.unlink(missing_ok=True)
    if state is None:
        files.checkpoint.unlink(missing_ok=True)
        files.metrics.unlink(missing_ok=True)
    else:
        R.keep_epochs_before(files.metrics, int(state["member"]["epoch"]), R.STUDENT_COLUMNS)
    R.atomic_write_yaml(files.config, run_config_record(run, config, device))
    R.atomic_write_json(files.owner, R.owner_record(worker))
    return state, notes


def _train_group(config, layout, data, signal, group, device, force, should_stop, worker, state: _SweepState,
                 label: str, done_before: int, pending_total: int, sizes: dict) -> Iterator:
    locks = {}
    try:
        mine = []
        for run in group:
            lock = R.RunLock(layout.lock_path(run.run_id))
            if not lock.acquire():
                state.busy.append(run.run_id)
                yield Note(f"{run.run_id} is being trained by another process; leaving it to that one")
                continue
            if not force and R.is_completed(layout.run_dir(run.run_id)):
                lock.release()  # finished by another process since we planned
                continue
            locks[run.run_id] = lock
            mine.append(run)
        prepared = []
        for run in mine:
            resume_state, notes = _prepare_run(run, layout, config, device, force, worker)
            yield from notes
            prepared.append((run, resume_state))
        by_epoch: dict[int, list] = {}
        for run, resume_state in prepared:
            epoch = int(resume_state["member"]["epoch"]) if resume_state else 0
            by_epoch.setdefault(epoch, []).append((run, resume_state))
            if resume_state:
                state.resumed += 1
            else:
                state.started += 1
        for _, members in sorted(by_epoch.items()):
            yield from _train_members(config, layout, data, signal, members, device, should_stop, state, label,
                                      done_before, pending_total, sizes)
            done_before += len(members)
    finally:
        for lock in locks.values():
            lock.release()


def _train_members(config, layout, data, signal, members, device, should_stop, state: _SweepState, label: str,
                   done_before: int, pending_total: int, sizes: dict) -> Iterator:
    spec = config.student
    spe = steps_per_epoch(len(data.train_y), config.student_batch_size())
    runs = [run for run, _ in members]
    seeds = sorted({run.seed for run in runs})
    settings = _loop_settings(config, spec, config.student_batch_size(), seeds[0], device)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, data.num_classes),
                         [member_for(run, spec.epochs, spe) for run in runs], data, signal, settings)
    resume_states = [s for _, s in members]
    if resume_states[0] is not None:
        group.load_member_states([s["member"] for s in resume_states])
    description = f"{label}: {len(runs)} runs at once (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    yield Progress("runs", "runs", done_before, pending_total)
    yield Progress("epochs", description, group.completed_epochs, spec.epochs)
    for event in group.run(should_stop):
        if isinstance(event, StepsDone):
            yield Progress("batches", f"epoch {event.epoch + 1}", event.step, event.steps_per_epoch)
            continue
        for k, run in enumerate(runs):
            files = R.RunFiles(layout.run_dir(run.run_id))
            if k in event.failures:
                files.checkpoint.unlink(missing_ok=True)
                R.atomic_write_json(files.summary, _summary(run, files, "failed", config, device, len(runs),
                                                            reason=event.failures[k], failed_epoch=event.epoch, **sizes))
                state.failed.append((run.run_id, event.failures[k]))
                continue
            row = event.metrics[k]
            if row is None:
                continue
            R.append_csv_row(files.metrics, {**run.columns(), **row, "t0": run.t0,
                                             "temperature": None if run.is_baseline else row["temperature"]},
                             R.STUDENT_COLUMNS)
            member_state = group.member_state(k)
            if event.epoch + 1 < spec.epochs:
                R.atomic_torch_save({"format": STUDENT_FORMAT, "run_id": run.run_id, "member": member_state}, files.checkpoint)
            else:
                R.atomic_torch_save({"format": STUDENT_FORMAT, "run_id": run.run_id, "state_dict": member_state["model"]},
                                    files.dir / "model.pt")
                R.atomic_write_json(files.summary, _summary(run, files, "completed", config, device, len(runs), **sizes))
                files.checkpoint.unlink(missing_ok=True)
                state.completed += 1
        yield Progress("batches", f"epoch {event.epoch + 1}", spe, spe)
        yield Progress("epochs", description, event.epoch + 1, spec.epochs)
    yield Progress("runs", "runs", done_before + len(runs), pending_total)


def _summary(run: RunSpec, files: R.RunFiles, status: str, config: ExperimentConfig, device: torch.device,
             group_size: int, **extra) -> dict:
    rows = R.read_csv_rows(files.metrics) if files.metrics.exists() else []
    final = {key: _number(value) for key, value in rows[-1].items()} if rows else {}
    accuracies = [float(row["test_acc"]) for row in rows if row.get("test_acc")]
    best = max(range(len(accuracies)), key=accuracies.__getitem__) if accuracies else None
    return {
        "run_id": run.run_id, "status": status, "schedule": run.schedule_label, "t0": run.t0, "alpha": run.alpha,
        "seed": run.seed, "epochs": config.student.epochs, "epochs_done": len(rows), "final": final,
        "best_test_acc": accuracies[best] if best is not None else None, "best_epoch": best,
        "wall_seconds": sum(float(row["epoch_seconds"]) for row in rows if row.get("epoch_seconds")),
        "device": str(device), "group_size": group_size, **extra,
    }


def _number(text: str):
    """A CSV cell back as None, int, float or text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
