"""search.json: what `kdtemp report` reads about a search — each trial's cell, fate and validation curve,
the runs it trained, the budget spent against the full grid's, the chosen cell and its confirmation.
Written whole (atomically) after every batch, so it is never half a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdtemp.store.files import atomic_write_json

RECORD = "search.json"


@dataclass
class TrialRecord:
    number: int
    schedule: str
    t0: float
    alpha: float
    state: str
    """complete, pruned, failed or running (Optuna's trial state, lower case)."""
    run_ids: list[str]
    curve: list[float] = field(default_factory=list)
    """Mean validation accuracy over the trial's seeds after each epoch: what the pruner saw."""
    pruned_epoch: int | None = None


@dataclass
class SearchRecord:
    seeds: list[int]
    epochs: int
    pruner: str
    trials: list[TrialRecord]
    baseline_run_ids: list[str]
    spent_student_epochs: int
    """Epochs trained by the search's runs (trials and no-KD), each counted once: an epoch two runs
    shared one member for counts once."""
    grid_student_epochs: int | None
    """What the sweep of the same finite grid trains: every cell and the baseline, every seed, every epoch;
    None for a continuous space."""
    chosen: dict | None = None
    """The completed trial of the highest mean validation accuracy: schedule, t0, alpha, val_acc."""
    confirm_seeds: list[int] = field(default_factory=list)
    confirm_run_ids: list[str] = field(default_factory=list)
    """The chosen cell's and no-KD's runs at the fresh confirm_seeds (search --confirm)."""
    confirm_student_epochs: int = 0
    """Epochs the confirmation trained, on top of spent_student_epochs."""
    shared_student_epochs: int = 0
    """Epochs recorded for a run from another's member while the two trained identically
    (kdtemp.search.shared_prefix): in the runs' files, not in spent_student_epochs."""

    def write(self, directory: Path) -> Path:
        path = directory / RECORD
        atomic_write_json(path, asdict(self))
        return path


def read_search_record(directory: Path) -> SearchRecord | None:
    """The search record in `directory` (runs/<name>/search/), None when there was no search or it is
    unreadable (the report then reads the runs as a sweep's)."""
    path = directory / RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        data["trials"] = [TrialRecord(**trial) for trial in data["trials"]]
        return SearchRecord(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def spent_text(spent: int, grid: int | None, shared: int = 0) -> str:
    """`spent 102 of the grid's 378 student-epochs (27%)`, and the epochs one member trained for several
    runs, which the count leaves out: the search's last line and the report's budget line say the same."""
    text = f"spent {spent} student-epochs"
    if grid:
        text = f"spent {spent} of the grid's {grid} student-epochs ({100 * spent / grid:.0f}%)"
    if shared:
        text += f" ({shared} more shared with a run that trained identically)"
    return text
