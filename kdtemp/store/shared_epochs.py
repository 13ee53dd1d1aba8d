"""A run's shared_epochs.json: the epochs its rows were recorded from another run's group member while
the two trained identically (kdtemp.search.shared_prefix), so a budget counts each trained epoch once.
It is cut with the run's metrics.csv whenever a run restarts or resumes (sweep.runner.prepare_run).
"""

from __future__ import annotations

import json

from kdtemp.store.files import atomic_write_json
from kdtemp.store.layout import RunFiles


def record_shared(files: RunFiles, epoch: int, trained_by: str) -> None:
    """Epoch `epoch` (0-based) of this run is recorded from `trained_by`'s member."""
    entries = [entry for entry in _entries(files) if entry["epoch"] != epoch]
    entries.append({"epoch": epoch, "trained_by": trained_by})
    atomic_write_json(files.shared_epochs, sorted(entries, key=lambda entry: entry["epoch"]))


def shared_epochs(files: RunFiles, epochs_done: int) -> int:
    """How many of the run's first `epochs_done` epochs another run's member trained."""
    return sum(1 for entry in _entries(files) if entry["epoch"] < epochs_done)


def forget_shared(files: RunFiles, from_epoch: int) -> None:
    """The run's rows from `from_epoch` on are gone: it trains those epochs itself."""
    if not files.shared_epochs.exists():
        return
    kept = [entry for entry in _entries(files) if entry["epoch"] < from_epoch]
    if kept:
        atomic_write_json(files.shared_epochs, kept)
    else:
        files.shared_epochs.unlink(missing_ok=True)


def _entries(files: RunFiles) -> list[dict]:
    return json.loads(files.shared_epochs.read_text()) if files.shared_epochs.exists() else []
