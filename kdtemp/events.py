"""What the jobs report while they run, and what they return.

The library never prints: a job takes an `emit` callback, calls it with a Note or a Progress as it
goes (a Slurm launch also with Submitted), and returns its result; the CLI renders the events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Note:
    """A line for the user; level 'warning' is shown as such."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class Progress:
    """Set progress task `task` to `completed` of `total` (None = unknown)."""

    task: str
    description: str
    completed: float
    total: float | None


@dataclass(frozen=True)
class TeacherResult:
    path: Path
    test_acc: float
    parameters: int
    epochs: int
    seconds: float
    already_trained: bool = False
    label: str = "teacher"
    imported: bool = False
    """A `checkpoint` teacher: evaluated and recorded, not trained."""


@dataclass(frozen=True)
class EnsembleResult:
    test_acc: float
    mode: str
    teachers: int
    path: Path


@dataclass(frozen=True)
class SweepResult:
    planned: int
    skipped: int
    resumed: int
    started: int
    completed: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(run_id, reason) of runs that diverged or broke."""
    busy: list[str] = field(default_factory=list)
    """Runs another process was training, left to it."""
    seconds: float = 0.0
    experiment_dir: Path | None = None


@dataclass(frozen=True)
class Submitted:
    """A sweep handed to Slurm as a job array: emitted as soon as it is submitted."""

    array_id: str
    tasks: int
    runs: int
    folder: Path


Event = Note | Progress | Submitted
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default `emit`: a job called from code that does not show progress reports to no one."""
