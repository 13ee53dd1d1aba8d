"""What every group of one sweep shares (SweepState), and how a run's epochs and end are recorded:
its metrics rows, checkpoints, weights and summary.json.

The born-again generations (kdtemp.sweep.generations) and the group training (kdtemp.sweep.runner) both record
a run's end here, so a finished and a failed run's summary.json have one writer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kdtemp.config.schema import ExperimentConfig
from kdtemp.data.dataset import Dataset
from kdtemp.engine.job_setup import StopCheck
from kdtemp.engine.loop import EpochDone, Member, TeacherSignal
from kdtemp.events import Emit, ignore
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.features import Hint
from kdtemp.store.files import (
    append_csv_row,
    atomic_torch_save,
    read_csv_rows,
    read_summary,
    write_summary,
)
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.loggers import RunLogger
from kdtemp.store.records import STUDENT_COLUMNS, RunSummary, Status
from kdtemp.sweep.plan import RunSpec
from kdtemp.teachers.loading import LoadedTeacher

STUDENT_FORMAT = "kdtemp-student/1"


@dataclass
class SweepState:
    """What every group of one sweep shares, and its running counts."""

    config: ExperimentConfig
    layout: ExperimentLayout
    data: Dataset
    device: torch.device
    teachers: list[LoadedTeacher]
    signal: TeacherSignal
    hint: Hint | None
    sizes: dict
    force: bool
    should_stop: StopCheck
    worker: str | None
    pending: int
    resumed: int = 0
    started: int = 0
    completed: int = 0
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    stackable: bool = True
    """False when vmap cannot run the student: its groups then train member by member."""
    emit: Emit = ignore
    """Where the sweep's notes and progress go."""

    @property
    def student_spec(self):
        return self.config.student


def _teachers_record(state: SweepState, run: RunSpec) -> list[dict]:
    if run.generation == 1:
        return [] if run.is_baseline else [t.record for t in state.teachers]
    assert run.parent is not None  # generations 2..N, made by plan.born_again with their parent
    parent = read_summary(state.layout.run_dir(run.parent))
    return [{"id": run.parent, "test_acc": parent.final.get("test_acc") if parent is not None else None}]


def run_summary(
    state: SweepState, run: RunSpec, files: RunFiles, status: Status, group_size: int, **extra
) -> RunSummary:
    """The run's summary.json, from its metrics.csv as written: `final` is its last row, cell by cell."""
    rows = read_csv_rows(files.metrics) if files.metrics.exists() else []
    final = {key: _number(value) for key, value in rows[-1].items()} if rows else {}
    best = best_epoch(rows)
    return RunSummary(
        run_id=run.run_id,
        status=status,
        schedule=run.schedule_label,
        t0=run.t0,
        alpha=run.alpha,
        seed=run.seed,
        generation=run.generation,
        parent=run.parent,
        epochs=state.student_spec.epochs,
        epochs_done=len(rows),
        final=final,
        best_epoch=best,
        best_val_acc=_number(rows[best]["val_acc"]) if best is not None else None,
        test_acc_at_best_val=_number(rows[best]["test_acc"]) if best is not None else None,
        validation=state.data.validation,
        val_is_test=state.data.val_is_test,
        wall_seconds=sum(float(row["epoch_seconds"]) for row in rows if row.get("epoch_seconds")),
        device=str(state.device),
        group_size=group_size,
        teachers=_teachers_record(state, run),
        **state.sizes,
        **extra,
    )


def best_epoch(rows: list[dict[str, str]]) -> int | None:
    """Index of the metrics.csv row with the highest validation accuracy (the first of equals); None
    without one. Chosen on validation, so the test accuracy of that epoch is an honest report."""
    scored = [
        (float(row["val_acc"]), -index) for index, row in enumerate(rows) if _finite(row.get("val_acc"))
    ]
    return -max(scored)[1] if scored else None


def _finite(text: str | None) -> bool:
    """A CSV cell holding a finite number (not empty, not nan)."""
    try:
        return text is not None and math.isfinite(float(text))
    except ValueError:
        return False


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


def record_epoch(
    state: SweepState,
    group: StudentGroup,
    runs: list[RunSpec],
    event: EpochDone,
    loggers: list[RunLogger],
    members: Sequence[int] | None = None,
) -> None:
    """Append each run's row (and log it), then its checkpoint; at the last epoch its weights,
    then summary.json. Run i is group member `members[i]` (default i): runs that have trained
    identically so far may share one member (kdtemp.search.lockstep)."""
    epochs = state.student_spec.epochs
    for i, run in enumerate(runs):
        k = i if members is None else members[i]
        files = state.layout.run_files(run.run_id)
        if k in event.failures:
            files.checkpoint.unlink(missing_ok=True)
            reason = divergence_reason(event.failures[k], state.config, not run.is_baseline)
            write_summary(
                files,
                run_summary(
                    state,
                    run,
                    files,
                    Status.FAILED,
                    len(group.members),
                    reason=reason,
                    failed_epoch=event.epoch,
                ),
            )
            state.failed.append((run.run_id, reason))
            continue
        row = event.metrics[k]
        if row is None:
            continue
        line = {
            **run.columns(),
            **row,
            "t0": run.t0,
            "temperature": None if run.is_baseline else row["temperature"],
        }
        # a user's KD method adds its own fields after the built-in columns
        columns = STUDENT_COLUMNS + [key for key in line if key not in STUDENT_COLUMNS]
        append_csv_row(files.metrics, line, columns)
        _log_epoch(loggers[i], line, group.members[k], event.epoch, epochs)
        member = group.member_state(k)
        if event.epoch + 1 < epochs:
            atomic_torch_save(
                {"format": STUDENT_FORMAT, "run_id": run.run_id, "member": member}, files.checkpoint
            )
            continue
        atomic_torch_save(
            {"format": STUDENT_FORMAT, "run_id": run.run_id, "state_dict": member["model"]}, files.model
        )
        write_summary(files, run_summary(state, run, files, Status.COMPLETED, len(group.members)))
        files.checkpoint.unlink(missing_ok=True)
        state.completed += 1


def _log_epoch(logger: RunLogger, line: dict, member: Member, epoch: int, epochs: int) -> None:
    """The row, and T at each step of the epoch from the run's temperature table.

    A learnable (CTKD) temperature is trained on the device and reaches the host only as the epoch's
    mean, the `temperature` scalar, so it has no per-step series; nor has the baseline, which does not distil.
    """
    logger.log_epoch(line, epoch)
    if member.distills and member.learnable is None:
        steps = len(member.temperatures) // epochs
        logger.log_temperatures(
            member.temperatures[epoch * steps : (epoch + 1) * steps].tolist(), epoch * steps
        )


def divergence_reason(reason: str, config: ExperimentConfig, distills: bool = True) -> str:
    """A diverged run's reason with the likely fixes. The KD term's gradient grows like T (T² times
    the 1/T of d softmax(z/T)/dz, Hinton et al. 2015), so a learning rate that suits T = 1 can blow
    up at T = 10."""
    fixes = [] if config.train.clip_grad_norm is not None else ["set train.clip_grad_norm (e.g. 1.0)"]
    fixes.append(f"lower student.lr (now {config.student.lr:g})")
    why = "; the KD gradient grows like T" if distills else ""
    return f"{reason}{why}: {' or '.join(fixes)}"
