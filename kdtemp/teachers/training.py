"""The teacher: training it, or an ensemble of them (loading one for the sweep:
kdtemp.teachers.loading).

`train_teacher` is the `kdtemp train-teacher` job. A finished teacher is kept, an interrupted one
resumes, one given as `teacher.checkpoint` is only evaluated and recorded
(kdtemp.teachers.checkpoint_formats); a checkpoint made for other data or another network is
refused with a message saying which.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from kdtemp.config.model_specs import ModelSpec, architecture_of, training_identity
from kdtemp.config.schema import ExperimentConfig, config_to_dict
from kdtemp.data.dataset import Dataset
from kdtemp.engine.device import set_up_device
from kdtemp.engine.evaluation import predict_logits
from kdtemp.engine.job_setup import (
    StopCheck,
    data_on,
    environment_record,
    loop_settings,
    set_up_threads,
)
from kdtemp.engine.loop import EpochDone, StepsDone
from kdtemp.engine.metrics import correct_count
from kdtemp.engine.randomness import keeps_global_rng, seeded
from kdtemp.engine.trainer import NetworkTrainer
from kdtemp.errors import CheckpointError
from kdtemp.events import Emit, EnsembleResult, Note, Progress, TeacherResult, ignore
from kdtemp.losses import soft_target_log_probs
from kdtemp.models.footprint import count_parameters
from kdtemp.models.registry import build_model
from kdtemp.store.files import (
    append_csv_row,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    check_writable,
    keep_epochs_before,
    load_checkpoint,
)
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.loggers import RunLogger, check_loggers, run_loggers
from kdtemp.store.records import TEACHER_COLUMNS
from kdtemp.teachers.checkpoint_formats import (
    ImportedTeacher,
    check_same_logits,
    import_teacher,
    is_saved_model,
)
from kdtemp.teachers.loading import (
    RETRAIN,
    TEACHER_FORMAT,
    check_source_unchanged,
    ensemble_weights,
    load_teachers,
    teacher_label,
)

# --- training ------------------------------------------------------------------------------------


def train_teacher(
    config: ExperimentConfig, force: bool = False, should_stop: StopCheck = None, emit: Emit = ignore
) -> list[TeacherResult | EnsembleResult]:
    """Train, evaluate each epoch and checkpoint the teacher (or each teacher of `teachers:`).

    Reports progress through `emit`; returns a TeacherResult per teacher and, for an ensemble, an
    EnsembleResult.
    """
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    device = set_up_device(config.device, config.train.deterministic)
    check_loggers(config)
    specs = config.teacher_specs()
    count = len(specs)
    finished = {}
    for index, spec in enumerate(specs):
        path = layout.teacher_files(index, count).model
        if path.exists() and not force:
            existing = load_checkpoint(path, "teacher checkpoint")
            if (
                existing.get("architecture") != architecture_of(spec)
                or existing.get("dataset") != config.data.dataset
            ):
                raise CheckpointError(
                    f"{path} holds a {existing.get('architecture', {}).get('arch')} teacher "
                    f"for {existing.get('dataset')}, "
                    f"but the config asks for {spec.arch} on {config.data.dataset}; {RETRAIN}"
                )
            check_source_unchanged(existing, spec, path)
            if "source" not in existing and existing.get("epochs") != spec.epochs:
                emit(
                    Note(
                        f"{teacher_label(index, count)} was trained for {existing.get('epochs')} epochs, "
                        f"kept as it is (this config asks for {spec.epochs}): "
                        "`--force` retrains it, `--name <new>` trains another",
                        "warning",
                    )
                )
            finished[index] = existing
    data = None
    imported: dict[int, ImportedTeacher] = {}
    if len(finished) < count or count > 1:
        data = data_on(device, config, emit)
        set_up_threads(config, emit)  # after the checks above: a refusal stays one line
        imported = _check_networks(config, specs, finished, data)
        check_writable(config.runs_dir)
        if data.tokenizer_json is not None:
            atomic_write_text(layout.tokenizer, data.tokenizer_json)
    results: list[TeacherResult | EnsembleResult] = []
    for index, spec in enumerate(specs):
        label = teacher_label(index, count)
        directory = layout.teacher_dir_of(index, count)
        if index in finished:
            existing = finished[index]
            results.append(
                TeacherResult(
                    RunFiles(directory).model,
                    float(existing["test_acc"]),
                    int(existing["parameters"]),
                    int(existing["epochs"]),
                    0.0,
                    already_trained=True,
                    label=label,
                    imported="source" in existing,
                )
            )
        elif index in imported:
            assert data is not None  # loaded above: not every teacher is finished
            results.append(_record_imported(config, spec, imported[index], directory, label, data, device))
        else:
            assert data is not None  # loaded above: not every teacher is finished
            with run_loggers(config, [layout.tensorboard_dir(label)]) as (logger,):
                results.append(
                    _train_one(config, spec, directory, label, data, device, force, should_stop, logger, emit)
                )
    if count > 1:
        assert data is not None  # loaded above for an ensemble
        results.append(_record_ensemble(config, layout, data, device))
    return results


@keeps_global_rng
def _check_networks(
    config: ExperimentConfig, specs: list[ModelSpec], finished: dict, data: Dataset
) -> dict[int, ImportedTeacher]:
    """Build every network the job will need, so a bad arch or checkpoint is refused before a file is written.

    The student is built too: a typo in it is found now, not after the teacher has trained for hours.
    Returns the imported checkpoint teachers by index.
    """
    imported = {}
    for index, spec in enumerate(specs):
        if index in finished:
            continue
        if spec.checkpoint is None and not is_saved_model(spec):
            build_model(spec, data.input_shape, data.num_classes, data.vocab_size)
        else:
            imported[index] = import_teacher(spec, data.input_shape, data.num_classes, data.vocab_size)
            check_same_logits(imported[index], data.test_x, spec.arch)
    build_model(config.student, data.input_shape, data.num_classes, data.vocab_size)
    return imported


def _record_imported(
    config: ExperimentConfig,
    spec: ModelSpec,
    teacher: ImportedTeacher,
    directory: Path,
    label: str,
    data: Dataset,
    device: torch.device,
) -> TeacherResult:
    """Evaluate an imported teacher and write teacher/model.pt as train-teacher would, plus where it
    came from."""
    started = time.perf_counter()
    model = teacher.model.to(device)
    logits = predict_logits(model, data.test_x, config.data.eval_batch_size, device)
    accuracy = int(correct_count(logits, data.test_y)) / len(data.test_y)  # a count over N, exact
    _write_teacher_config(config, spec, directory, device)
    files = RunFiles(directory)
    model_path = files.model
    record = _teacher_record(
        spec, model, data, device, accuracy, float(F.cross_entropy(logits, data.test_y)), epochs=0
    )
    atomic_torch_save({**record, "source": teacher.source}, model_path)
    for stale in (files.checkpoint, files.metrics):
        stale.unlink(missing_ok=True)
    return TeacherResult(
        model_path,
        accuracy,
        record["parameters"],
        0,
        time.perf_counter() - started,
        label=label,
        imported=True,
    )


def _write_teacher_config(
    config: ExperimentConfig, spec: ModelSpec, directory: Path, device: torch.device
) -> None:
    atomic_write_yaml(
        RunFiles(directory).config,
        {
            "teacher": spec.model_dump(mode="json"),
            "experiment": config_to_dict(config),
            "environment": environment_record(device),
        },
    )


def _teacher_record(
    spec: ModelSpec,
    model: nn.Module,
    data: Dataset,
    device: torch.device,
    test_acc: float,
    test_loss: float,
    epochs: int,
) -> dict:
    """teacher/model.pt's contents, trained or imported: what check_teacher_matches and the report read."""
    return {
        "format": TEACHER_FORMAT,
        "state_dict": model.state_dict(),
        "architecture": architecture_of(spec),
        "dataset": data.name,
        "data_fingerprint": data.fingerprint(),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "vocab_size": data.vocab_size,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "epochs": epochs,
        "parameters": count_parameters(model),
        "environment": environment_record(device),
    }


def _train_one(
    config: ExperimentConfig,
    spec: ModelSpec,
    directory: Path,
    label: str,
    data: Dataset,
    device: torch.device,
    force: bool,
    should_stop: StopCheck,
    logger: RunLogger,
    emit: Emit,
) -> TeacherResult:
    with seeded(spec.seed):  # the init its seed gives, the caller's RNG left as it was
        model = build_model(spec, data.input_shape, data.num_classes, data.vocab_size)
    trainer = NetworkTrainer(model, data, loop_settings(config, spec, spec.seed, device, model))
    files = RunFiles(directory)
    checkpoint_path, metrics_path, model_path = files.checkpoint, files.metrics, files.model
    # the data's fingerprint too: a teacher cut off on one image folder or array file must not resume
    # on another
    identity = {
        "architecture": architecture_of(spec),
        "training": training_identity(spec),
        "dataset": config.data.dataset,
        "data": data.fingerprint(),
    }
    if force:
        for stale in (checkpoint_path, metrics_path, model_path):
            stale.unlink(missing_ok=True)
    elif checkpoint_path.exists():
        try:
            state = load_checkpoint(checkpoint_path, "teacher checkpoint")
            if state.get("identity") == identity:
                trainer.load_state(state["trainer"])
                emit(Note(f"resuming {label} from epoch {trainer.completed_epochs}"))
        except CheckpointError as exc:
            emit(Note(f"{exc}; training {label} from scratch", "warning"))
    if trainer.completed_epochs == 0:
        metrics_path.unlink(missing_ok=True)
    else:
        keep_epochs_before(metrics_path, trainer.completed_epochs, TEACHER_COLUMNS)
    _write_teacher_config(config, spec, directory, device)
    parameters = count_parameters(trainer.model)
    emit(
        Note(
            f"{label} {spec.arch}: {parameters:,} parameters, "
            f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''} on {device}, "
            f"seed {spec.seed}"
        )
    )
    started = time.perf_counter()
    last: dict = {}
    description = f"{label} {spec.arch}"
    emit(Progress("epochs", description, trainer.completed_epochs, spec.epochs))
    for event in trainer.run(should_stop):
        if isinstance(event, StepsDone):
            emit(Progress("batches", f"epoch {event.epoch + 1}", event.step, event.steps_per_epoch))
        elif isinstance(event, EpochDone):
            if event.failures:
                raise CheckpointError(
                    f"{label} training diverged: {event.failures[0]}; "
                    "lower its lr or set train.clip_grad_norm"
                )
            last = cast(dict, event.metrics[0])  # not failed (that raised above): the network's row
            append_csv_row(metrics_path, last, TEACHER_COLUMNS)
            logger.log_epoch({column: last.get(column) for column in TEACHER_COLUMNS}, event.epoch)
            atomic_torch_save({"identity": identity, "trainer": trainer.state()}, checkpoint_path)
            emit(
                Progress(
                    "batches", f"epoch {event.epoch + 1}", trainer.steps_per_epoch, trainer.steps_per_epoch
                )
            )
            emit(
                Progress(
                    "epochs",
                    f"{description}  test acc {100 * last['test_acc']:.1f}%",
                    event.epoch + 1,
                    spec.epochs,
                )
            )
    if not last:  # resumed after the final epoch had already been checkpointed
        last = trainer.evaluate()
    atomic_torch_save(
        _teacher_record(
            spec, trainer.model, data, device, float(last["test_acc"]), float(last["test_loss"]), spec.epochs
        ),
        model_path,
    )
    checkpoint_path.unlink(missing_ok=True)
    return TeacherResult(
        model_path,
        float(last["test_acc"]),
        parameters,
        spec.epochs,
        time.perf_counter() - started,
        label=label,
    )


def _record_ensemble(
    config: ExperimentConfig, layout: ExperimentLayout, data: Dataset, device: torch.device
) -> EnsembleResult:
    """Evaluate the ensemble on the test set and write teacher/ensemble.json."""
    teachers = load_teachers(config, data, device)
    test_logits = torch.stack(
        [predict_logits(t.model, data.test_x, config.data.eval_batch_size, device) for t in teachers]
    )
    combined = soft_target_log_probs(
        test_logits, 1.0, ensemble=config.kd.ensemble, weights=ensemble_weights(config, device)
    )
    accuracy = int(correct_count(combined, data.test_y)) / len(data.test_y)  # a count over N, exact
    record = {
        "ensemble": config.kd.ensemble,
        "weights": config.kd.teacher_weights,
        "test_acc": accuracy,
        "parameters": sum(int(t.checkpoint["parameters"]) for t in teachers),
        "num_classes": data.num_classes,
        "teachers": [
            {
                "id": t.label,
                "test_acc": float(t.checkpoint["test_acc"]),
                "parameters": int(t.checkpoint["parameters"]),
                "fingerprint": t.fingerprint,
            }
            for t in teachers
        ],
    }
    atomic_write_json(layout.ensemble_record, record)
    return EnsembleResult(accuracy, config.kd.ensemble, len(teachers), layout.ensemble_record)
