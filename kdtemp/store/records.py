"""What a run's files hold, as typed records: one model shared by the code that writes a file and every
reader.

summary.json is a `RunSummary` (written once, last, by the sweep); metrics.csv rows follow
`StudentRow` (students) and `TeacherRow` (teachers), whose fields are the CSV's columns in order.
A run's status and the baseline's schedule name are one constant each, here.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

BASELINE = "none"
"""The schedule column of a no-KD baseline run (metrics.csv, summary.json, summary.csv)."""
TEACHER = "teacher"
"""The schedule column of the teacher's row in summary.csv."""

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (requires-python >= 3.10) has no enum.StrEnum: the same behaviour, as 3.11 defines it

    class StrEnum(str, Enum):
        """Members are strings, and str() and format() give the value (not `Status.COMPLETED`)."""

        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, format_spec: str) -> str:
            return str.__format__(self, format_spec)


Number = StrictInt | StrictFloat
"""A JSON number kept as written (an int stays an int, a float a float): a summary round-trips byte for
byte."""


class Status(StrEnum):
    """Where a run stands: summary.json records the first two, `kdtemp status` derives the rest."""

    COMPLETED = "completed"
    RUNNING = "running"
    FAILED = "failed"
    PRUNED = "pruned"
    """Stopped by `kdtemp search`'s pruner at a rung: behind the other trials on validation."""
    INTERRUPTED = "interrupted"
    PENDING = "pending"


FINISHED = (Status.COMPLETED, Status.FAILED, Status.PRUNED)
"""The statuses a summary.json records: a run the sweep or search has finished with, either way."""


class StudentRow(BaseModel):
    """One epoch of one student run: a metrics.csv row. The field order is the CSV's column order."""

    run_id: str
    schedule: str
    t0: float | None = None
    alpha: float
    seed: int
    epoch: int
    temperature: float | None = None
    lr: float | None = None
    train_loss: float | None = None
    train_ce: float | None = None
    train_kd: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    agreement: float | None = None
    epoch_seconds: float | None = None
    test_kl: float | None = None
    test_ece: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    val_agreement: float | None = None
    val_kl: float | None = None
    val_ece: float | None = None
    effective_temperature: float | None = None
    train_penalty: float | None = None
    train_feature: float | None = None
    generation: int | None = None


class TeacherRow(BaseModel):
    """One epoch of a teacher's training: a teacher/metrics.csv row, in column order."""

    epoch: int
    lr: float | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    test_ece: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    val_ece: float | None = None
    epoch_seconds: float | None = None


STUDENT_COLUMNS = list(StudentRow.model_fields)
TEACHER_COLUMNS = list(TeacherRow.model_fields)

SIZE_FIELDS = (
    "student_params",
    "teacher_params",
    "student_size_bytes",
    "teacher_size_bytes",
    "student_latency_ms",
    "teacher_latency_ms",
    "student_flops",
    "teacher_flops",
    "latency_batch_size",
)


class RunSummary(BaseModel):
    """summary.json: how a run ended, its final and best metrics, and what it was measured on.

    Keys an older kdtemp did not write (generation, parent, final, ...) default to what they meant
    then; `status` is required, and `epochs` too once a run completed (the check that its metrics.csv
    is whole needs it). Keys this model does not know are kept, so a newer summary reads and rewrites whole.
    """

    model_config = ConfigDict(extra="allow")

    status: Status
    run_id: str | None = None
    schedule: str | None = None
    t0: Number | None = None
    alpha: Number | None = None
    seed: StrictInt | None = None
    generation: StrictInt = 1
    parent: str | None = None
    epochs: StrictInt | None = None
    epochs_done: StrictInt | None = None
    final: dict[str, Any] = {}
    """The last metrics.csv row, each cell as a number, text or None."""
    best_epoch: StrictInt | None = None
    """The epoch of the highest validation accuracy (the first, on a tie): chosen on validation."""
    best_val_acc: Number | None = None
    test_acc_at_best_val: Number | None = None
    """Test accuracy at `best_epoch`; it replaces best_test_acc, the best epoch chosen on test."""
    validation: str | None = None
    """Where the validation split came from (kdtemp.data.validation), in words."""
    val_is_test: bool | None = None
    """True when there was no validation split (data.val_fraction 0): val_ metrics are the test ones, and
    the report says that its choices were made on test. None: written before validation splits."""
    wall_seconds: Number | None = None
    device: str | None = None
    group_size: StrictInt | None = None
    teachers: list[dict[str, Any]] = []
    """The teacher(s) it distilled from ({id, test_acc, fingerprint}); a born-again child's parent run."""
    reason: str | None = None
    """Why a failed run failed, with the likely fix."""
    failed_epoch: StrictInt | None = None
    pruned_epoch: StrictInt | None = None
    """The epochs a pruned run trained before `kdtemp search`'s pruner stopped it (its rung)."""
    student_params: StrictInt | None = None
    teacher_params: StrictInt | None = None
    student_size_bytes: StrictInt | None = None
    teacher_size_bytes: StrictInt | None = None
    student_latency_ms: Number | None = None
    teacher_latency_ms: Number | None = None
    student_flops: Number | None = None
    teacher_flops: Number | None = None
    latency_batch_size: StrictInt | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _finished(cls, status: Any) -> Any:
        if status not in FINISHED:
            raise ValueError(f"a summary records {' or '.join(FINISHED)}, not {status!r}")
        return status

    @field_validator("generation", mode="before")
    @classmethod
    def _first_generation(cls, generation: Any) -> Any:
        return 1 if generation is None else generation

    @model_validator(mode="after")
    def _completed_has_epochs(self) -> RunSummary:
        if self.status == Status.COMPLETED and self.epochs is None:
            raise ValueError("epochs: a completed run's summary records its epochs")
        return self

    @property
    def test_acc(self) -> float | None:
        """The last epoch's test accuracy, as the run recorded it."""
        accuracy = self.final.get("test_acc")
        return accuracy if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) else None

    def sizes(self) -> dict[str, Any]:
        """The footprint fields (footprint.student_and_teacher) the run recorded."""
        return {key: getattr(self, key) for key in SIZE_FIELDS if getattr(self, key) is not None}

    def to_json(self) -> dict[str, Any]:
        """What summary.json holds: the keys that were given, nothing filled in by a default."""
        return self.model_dump(mode="json", exclude_unset=True)


def summary_problem(error: ValidationError) -> str:
    """The first thing wrong with a summary.json, in one line: `epochs: Input should be a valid integer`."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
