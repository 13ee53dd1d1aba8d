"""What a sweep is trained from, prepared once before anything is written: the device, the data on
it, the loaded teachers, and one probe of the student that every check and measurement reads.

The probe is built once and never trained: the hint's feature shape, whether vmap can stack the
student, how many members fit the device and the student's footprint are all read off it, each in
forked RNG state, so preparing changes nothing a run will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdtemp.config.schema import ExperimentConfig
from kdtemp.data.dataset import Dataset
from kdtemp.engine.device import max_group_size, member_bytes, set_up_device
from kdtemp.engine.job_setup import data_on, set_up_threads
from kdtemp.engine.randomness import caller_rng_kept, keeps_global_rng
from kdtemp.engine.stacking import probe_vmap, quiet_batching_rule_warnings
from kdtemp.events import Emit, Note, ignore
from kdtemp.models.features import Hint, build_regressor, feature_shape
from kdtemp.models.footprint import student_and_teacher
from kdtemp.models.inspection import has_dropout
from kdtemp.models.registry import build_model
from kdtemp.store.layout import ExperimentLayout
from kdtemp.store.loggers import check_loggers
from kdtemp.teachers.loading import (
    LoadedTeacher,
    load_teachers,
    teacher_paths,
    teachers_fingerprint,
)


@dataclass(frozen=True)
class PreparedExperiment:
    """The experiment's data, teachers and student probe, shared by every group of one sweep."""

    config: ExperimentConfig
    layout: ExperimentLayout
    device: torch.device
    data: Dataset
    teachers: list[LoadedTeacher]
    student_probe: nn.Module
    """One student on the device, built in forked RNG state: read for shapes and sizes, never trained."""
    hint: Hint | None

    @property
    def teacher_fingerprint(self) -> str:
        return teachers_fingerprint([teacher.fingerprint for teacher in self.teachers], self.config)

    @property
    def seeds_can_share_a_group(self) -> bool:
        """Dropout masks are the one draw a group cannot give each seed."""
        return not has_dropout(self.student_probe)

    def stackable(self, emit: Emit = ignore) -> bool:
        """Whether vmap can run the student stacked; a note when it cannot (its runs then train one at a
        time), and one note, instead of torch's stream of warnings, for ops vmap runs slice by slice."""
        reason, slow_ops = self._probe_vmap()
        if reason is not None:
            emit(
                Note(
                    f"{self.config.student.arch} cannot be stacked with vmap ({reason}); "
                    "its runs train one member at a "
                    "time, with the same results and files, more slowly"
                )
            )
        elif slow_ops:
            emit(
                Note(
                    f"torch has no batching rule for {', '.join(slow_ops)}: stacked "
                    f"{self.config.student.arch} students run it one member at a time inside vmap "
                    "(same numbers, slower); torch's warnings about it are silenced"
                )
            )
            quiet_batching_rule_warnings()
        return reason is None

    @keeps_global_rng
    def _probe_vmap(self) -> tuple[str | None, tuple[str, ...]]:
        return probe_vmap([self.student_probe, self.student_probe], self.data.train_x[:2])

    @keeps_global_rng
    def group_limit(self) -> int:
        """How many students fit the device at once (train.max_group_size caps it)."""
        slots = {"sgd": 1, "adam": 2, "adamw": 2}[self.config.student.optimizer]
        batch = self.data.train_x[: self.config.student_batch_size()]
        return max_group_size(
            member_bytes(self.student_probe, batch, slots), 0, self.device, self.config.train.max_group_size
        )

    def sizes(self) -> dict:
        """The student's and the teachers' footprint (parameters, bytes, FLOPs, latency)."""
        with caller_rng_kept():  # a forward pass of the student, dropout and all
            return student_and_teacher(
                self.student_probe,
                [teacher.model for teacher in self.teachers],
                self.data.train_x[: self.config.student_batch_size()],
                self.device,
            )


def prepare_experiment(config: ExperimentConfig, emit: Emit = ignore) -> PreparedExperiment:
    """Everything a sweep's runs need that does not depend on the run, with every check a user's input
    can fail made before the first file is written."""
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    device = set_up_device(config.device, config.train.deterministic)
    teacher_paths(config)
    check_loggers(config)
    data = data_on(device, config, emit)
    set_up_threads(config, emit)  # after the checks above: a refusal stays one line
    teachers = load_teachers(config, data, device)
    # built before anything is written, so a student that does not fit the data is refused first
    with caller_rng_kept():
        student = build_model(config.student, data.input_shape, data.num_classes, data.vocab_size).to(device)
    hint = hint_settings(config, data, teachers, student)
    return PreparedExperiment(config, layout, device, data, teachers, student, hint)


@keeps_global_rng
def hint_settings(
    config: ExperimentConfig, data: Dataset, teachers: list[LoadedTeacher], student: nn.Module
) -> Hint | None:
    """The hint settings, with both layers resolved and the regressor's shapes checked before
    anything runs."""
    if config.kd.feature_weight <= 0:
        return None
    layers = config.kd.feature_layers
    student_layer = layers.student if layers else None
    example = data.train_x[:2]
    teacher_shape = feature_shape(teachers[0].model, layers.teacher if layers else None, example, "teacher")
    build_regressor(feature_shape(student, student_layer, example, "student"), teacher_shape)
    return Hint(config.kd.feature_weight, student_layer, teacher_shape)
