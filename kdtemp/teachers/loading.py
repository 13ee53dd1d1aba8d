"""Trained teachers as the sweep uses them: loaded safely, checked against the data and the network,
and their outputs on the training set (logits, hint features), computed once and cached.

The cache is keyed by the checkpoint's content, the dataset and the input transform, so every sweep
after the first reuses it. Training a teacher is `kdtemp.teachers.training`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from filelock import FileLock
from torch import nn

from kdtemp.config.model_specs import HFSpec, ModelSpec, architecture_of
from kdtemp.config.schema import ExperimentConfig
from kdtemp.data.dataset import Dataset
from kdtemp.engine.evaluation import predict_logits
from kdtemp.engine.job_setup import wants_channels_last
from kdtemp.engine.randomness import keeps_global_rng
from kdtemp.errors import CheckpointError
from kdtemp.events import Emit, Note, ignore
from kdtemp.models.features import predict_features
from kdtemp.models.registry import build_model
from kdtemp.store.files import (
    atomic_torch_save,
    file_fingerprint,
    file_sha256,
    load_checkpoint,
)
from kdtemp.store.layout import ExperimentLayout
from kdtemp.teachers.checkpoint_formats import folder_sha256, is_saved_model

TEACHER_FORMAT = "kdtemp-teacher/1"
LOGITS_FORMAT = "kdtemp-teacher-logits/2"
"""/2: computed in float32 without autocast (/1 caches made on CUDA held bf16-rounded logits); others
are recomputed."""
RETRAIN = (
    "to keep it, give this experiment its own name: `--name <new>` on train-teacher, sweep and report; "
    "or `kdtemp train-teacher --force` overwrites it (and its students are retrained)"
)
"""The fix for a teacher made for other data: a new name first, so two experiments never share a folder."""


def teacher_label(index: int, count: int) -> str:
    return "teacher" if count == 1 else f"teacher-{index}"


# --- loading -------------------------------------------------------------------------------------


def check_source_unchanged(record: dict, spec: ModelSpec, path: Path) -> None:
    """A teacher imported from `teacher.checkpoint` (or a saved transformers folder) stands for that file:
    refuse it when the file changed."""
    source = record.get("source") or {}
    if is_saved_model(spec):
        assert isinstance(spec, HFSpec)
        if spec.folder.is_dir() and source.get("sha256") != folder_sha256(spec.folder):
            raise CheckpointError(
                f"{path} was not recorded from the current {spec.arch} (its files differ); run "
                "`kdtemp train-teacher --force` to record it again (its students will be retrained)"
            )
        return
    if spec.checkpoint is None or not Path(spec.checkpoint).is_file():
        return
    if source.get("sha256") != file_sha256(Path(spec.checkpoint)):
        raise CheckpointError(
            f"{path} was not imported from the current teacher.checkpoint {spec.checkpoint} (its content "
            "differs); run `kdtemp train-teacher --force` to import it (its students will be retrained)"
        )


@dataclass(frozen=True)
class LoadedTeacher:
    model: nn.Module
    checkpoint: dict
    fingerprint: str
    path: Path
    label: str

    @property
    def record(self) -> dict:
        """How summary.json names a teacher a run distilled from."""
        return {
            "id": self.label,
            "test_acc": float(self.checkpoint["test_acc"]),
            "fingerprint": self.fingerprint,
        }


@keeps_global_rng
def load_teachers(config: ExperimentConfig, data: Dataset, device: torch.device) -> list[LoadedTeacher]:
    """The experiment's trained teacher(s), refused when made for other data or another network."""
    specs = config.teacher_specs()
    teachers = []
    for index, (spec, path) in enumerate(zip(specs, teacher_paths(config), strict=False)):
        checkpoint = load_checkpoint(path, "teacher checkpoint")
        if checkpoint.get("format") != TEACHER_FORMAT or "state_dict" not in checkpoint:
            raise CheckpointError(
                f"{path} is not a kdtemp teacher checkpoint; retrain it with `kdtemp train-teacher --force`"
            )
        check_teacher_matches(checkpoint, spec, data, path)
        model = build_model(spec, data.input_shape, data.num_classes, data.vocab_size)
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: weights do not fit a {spec.arch} ({str(exc).splitlines()[0]}); {RETRAIN}"
            ) from None
        teachers.append(
            LoadedTeacher(
                model.to(device).eval(),
                checkpoint,
                file_fingerprint(path),
                path,
                teacher_label(index, len(specs)),
            )
        )
    return teachers


def check_teacher_matches(checkpoint: dict, spec: ModelSpec, data: Dataset, path: Path) -> None:
    if checkpoint.get("dataset") != data.name:
        raise CheckpointError(
            f"teacher {path} was trained on {checkpoint.get('dataset')}, "
            f"this config uses {data.name}; {RETRAIN}"
        )
    if checkpoint.get("num_classes") != data.num_classes:
        raise CheckpointError(
            f"teacher {path} predicts {checkpoint.get('num_classes')} classes, "
            f"{data.name} has {data.num_classes}; {RETRAIN}"
        )
    if list(checkpoint.get("input_shape", [])) != list(data.input_shape):
        raise CheckpointError(
            f"teacher {path} takes inputs of shape {checkpoint.get('input_shape')}, "
            f"{data.name} gives {list(data.input_shape)}; {RETRAIN}"
        )
    wanted = architecture_of(spec)
    if checkpoint.get("architecture") != wanted:
        raise CheckpointError(
            f"teacher {path} is a {checkpoint.get('architecture')}, the config asks for {wanted}; {RETRAIN}"
        )
    check_source_unchanged(checkpoint, spec, path)
    if checkpoint.get("data_fingerprint") not in (None, data.fingerprint()):
        raise CheckpointError(
            f"teacher {path} was trained on different {data.name} data (content differs: a teacher trained "
            "before kdtemp held out a validation split trained on it too); "
            f"{RETRAIN}, or set data.val_fraction: 0 to use it as before"
        )


def teachers_fingerprint(fingerprints: list[str], config: ExperimentConfig) -> str:
    """What identifies the soft targets: the checkpoint's content, or every member's and how they combine."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    parts = [*fingerprints, config.kd.ensemble, json.dumps(config.kd.teacher_weights)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def teacher_paths(config: ExperimentConfig) -> list[Path]:
    """The experiment's teacher checkpoints, refused with the command to run when one is missing."""
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    paths = layout.teacher_models(len(config.teacher_specs()))
    for path in paths:
        if not path.exists():
            raise CheckpointError(
                f"no teacher at {path}; train it first (`kdtemp train-teacher` with the --config, --name "
                f"and --runs-dir given here), or copy a trained teacher/ folder into {layout.root}"
            )
    return paths


def ensemble_weights(config: ExperimentConfig, device: torch.device) -> torch.Tensor | None:
    weights = config.kd.teacher_weights
    return None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)


# --- soft targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitLogits:
    """A teacher's (or, stacked on a first axis, every teacher's) logits on each split."""

    train: torch.Tensor | None
    """None with augmentation: the training inputs change every epoch, so the teacher runs on each batch."""
    val: torch.Tensor | None
    """None when the data has no validation split (data.val_fraction 0)."""
    test: torch.Tensor


def teacher_logits(
    teacher: LoadedTeacher, data: Dataset, config: ExperimentConfig, device: torch.device, emit: Emit = ignore
) -> SplitLogits:
    """The teacher's logits on the training, validation and test sets: one eval pass over each split,
    cached on disk.

    With augmentation the training inputs change every epoch, so only validation and test logits are
    cached and the teacher runs on each batch instead.
    """
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    transform = "augment" if config.data.augment else "none"
    path = layout.teacher_logits_cache(teacher.fingerprint, transform)
    # several workers or jobs may start at once: one computes, the others wait and read its cache
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        return _cached_teacher_logits(teacher, data, config, device, path, emit)


def _cached_teacher_logits(
    teacher: LoadedTeacher,
    data: Dataset,
    config: ExperimentConfig,
    device: torch.device,
    path: Path,
    emit: Emit,
) -> SplitLogits:
    data_fingerprint = data.fingerprint()
    channels_last = wants_channels_last(teacher.model, device)
    if path.exists():
        try:
            cached = load_checkpoint(path, "teacher-logits cache")
            if (
                cached.get("format") == LOGITS_FORMAT
                and cached.get("data_fingerprint") == data_fingerprint
                and cached["test"].shape == (len(data.test_y), data.num_classes)
                and (cached.get("val") is None) == data.val_is_test
            ):
                emit(Note(f"{teacher.label} logits read from cache {path.name}"))
                train, val = (cached.get(split) for split in ("train", "val"))
                return SplitLogits(
                    train=None if train is None else train.to(device),
                    val=None if val is None else val.to(device),
                    test=cached["test"].to(device),
                )
        except (CheckpointError, KeyError, AttributeError):
            pass
        emit(
            Note(
                f"teacher-logits cache {path.name} does not fit this data or is of an older format; "
                "recomputing",
                "warning",
            )
        )
    emit(Note(f"computing {teacher.label} logits on the training set (once for the whole grid)"))
    batch = config.data.eval_batch_size

    def logits_on(split: str) -> torch.Tensor:
        return predict_logits(teacher.model, data.split(split)[0], batch, device, channels_last)

    logits = SplitLogits(
        train=None if config.data.augment else logits_on("train"),
        val=None if data.val_is_test else logits_on("val"),
        test=logits_on("test"),
    )
    atomic_torch_save(
        {
            "format": LOGITS_FORMAT,
            "dtype": str(logits.test.dtype),
            "data_fingerprint": data_fingerprint,
            **{
                split: None if value is None else value.cpu()
                for split, value in zip(SPLIT_NAMES, (logits.train, logits.val, logits.test), strict=True)
            },
        },
        path,
    )
    return logits


SPLIT_NAMES = ("train", "val", "test")
"""SplitLogits' fields in order, as the cache file names them."""


def all_teacher_logits(
    teachers: list[LoadedTeacher],
    data: Dataset,
    config: ExperimentConfig,
    device: torch.device,
    emit: Emit = ignore,
) -> SplitLogits:
    """Every teacher's logits stacked on a teacher axis: train (n, N, C) or None, val (n, N_val, C) or None,
    test (n, N_test, C)."""
    each = [teacher_logits(teacher, data, config, device, emit) for teacher in teachers]

    def stacked(values: list[torch.Tensor | None]) -> torch.Tensor | None:
        # every teacher has the split's logits or none has (augmentation, no validation split)
        return None if values[0] is None else torch.stack(cast(list[torch.Tensor], values))

    return SplitLogits(
        train=stacked([logits.train for logits in each]),
        val=stacked([logits.val for logits in each]),
        test=torch.stack([logits.test for logits in each]),
    )


def teacher_features(
    models: list[nn.Module], layer: str | None, data: Dataset, config: ExperimentConfig, device: torch.device
) -> torch.Tensor:
    """Hint targets: each model's feature at `layer` for every training input, stacked: (n, N, *F)."""
    features = [
        predict_features(model, layer, data.train_x, config.data.eval_batch_size, device) for model in models
    ]
    shapes = {tuple(f.shape[1:]) for f in features}
    if len(shapes) > 1:
        raise CheckpointError(
            f"the teachers' hint features differ in shape {sorted(shapes)}; "
            "set kd.feature_layers.teacher to a layer of one shape in every teacher"
        )
    return torch.stack(features)
