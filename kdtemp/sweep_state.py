"""What every group of one sweep shares (SweepState), and the summary.json it writes for each run.

The born-again generations (kdtemp.generations) and the group training (kdtemp.sweep) both record
a run's end here, so a finished and a failed run's summary.json have one writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdtemp import runs as R
from kdtemp.config import ExperimentConfig
from kdtemp.data import Dataset
from kdtemp.engine import TeacherSignal
from kdtemp.events import Emit, ignore
from kdtemp.plan import RunSpec
from kdtemp.prepare import StopCheck
from kdtemp.records import RunSummary, Status
from kdtemp.student_group import Hint
from kdtemp.teachers import LoadedTeacher


@dataclass
class SweepState:
    """What every group of one sweep shares, and its running counts."""

    config: ExperimentConfig
    layout: R.ExperimentLayout
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
    parent = R.read_summary(state.layout.run_dir(run.parent))
    return [{"id": run.parent, "test_acc": parent.final.get("test_acc") if parent is not None else None}]


def run_summary(
    state: SweepState, run: RunSpec, files: R.RunFiles, status: Status, group_size: int, **extra
) -> RunSummary:
    """The run's summary.json, from its metrics.csv as written: `final` is its last row, cell by cell."""
    rows = R.read_csv_rows(files.metrics) if files.metrics.exists() else []
    final = {key: _number(value) for key, value in rows[-1].items()} if rows else {}
    accuracies = [float(row["test_acc"]) for row in rows if row.get("test_acc")]
    best = max(range(len(accuracies)), key=accuracies.__getitem__) if accuracies else None
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
        best_test_acc=accuracies[best] if best is not None else None,
        best_epoch=best,
        wall_seconds=sum(float(row["epoch_seconds"]) for row in rows if row.get("epoch_seconds")),
        device=str(state.device),
        group_size=group_size,
        teachers=_teachers_record(state, run),
        **state.sizes,
        **extra,
    )


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
