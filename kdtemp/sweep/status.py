"""Where each run of a sweep stands, read from its files and locks: what `kdtemp status` prints.

Safe to run while a sweep is going: it only reads, and a run whose lock another process holds is
reported as running, with the worker or Slurm job that holds it.

What was swept is what is on disk, whatever grid the sweep was given (`sweep --temps 1,3,5,10` on a
config that plans 1, 2, 4, 8); what the config (with the same grid options) plans and is not on disk
is listed apart, as pending.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import RunsError
from kdtemp.store.files import load_summary, read_csv_rows, summary_is_complete
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.locks import is_locked_elsewhere
from kdtemp.store.records import RunSummary, Status
from kdtemp.sweep.plan import planned_runs

STATES = tuple(Status)


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: Status
    epochs_done: int
    epochs: int
    test_acc: float | None
    detail: str = ""
    """Who trains a running run; why a failed run failed; where an interrupted run resumes."""
    on_disk: bool = True
    """False for a run the config plans that no sweep has started."""


def _owner(files: RunFiles) -> str:
    try:
        owner = json.loads(files.owner.read_text())
    except (OSError, ValueError):
        return ""
    if "slurm_array_job_id" in owner:
        who = f"slurm job {owner['slurm_array_job_id']}_{owner.get('slurm_array_task_id', '?')}"
    elif "slurm_job_id" in owner:
        who = f"slurm job {owner['slurm_job_id']}"
    else:
        who = owner.get("worker") or "sweep"
    return f"{who}, pid {owner.get('pid')} on {owner.get('host')}"


def sweep_status(config: ExperimentConfig) -> list[RunStatus]:
    """Every run on disk (in natural order of run id), then each run the config plans that is not on disk."""
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    on_disk = sorted(layout.run_dirs(), key=lambda run_dir: _natural(run_dir.name))
    swept = [run_status(run_dir, config.student.epochs) for run_dir in on_disk]
    names = {run_dir.name for run_dir in on_disk}
    missing = [
        RunStatus(run.run_id, Status.PENDING, 0, config.student.epochs, None, on_disk=False)
        for run in planned_runs(config)
        if run.run_id not in names
    ]
    return swept + missing


def run_status(run_dir: Path, default_epochs: int) -> RunStatus:
    """One run's state from its files and lock."""
    files = RunFiles(run_dir)
    rows = read_csv_rows(files.metrics) if files.metrics.exists() else []
    accuracy = _float(rows[-1].get("test_acc")) if rows else None
    try:
        summary, problem = load_summary(files.dir), ""
    except RunsError as exc:
        summary, problem = None, str(exc)
    state, detail = _state(files, summary, rows, problem)
    epochs = (summary.epochs if summary is not None else None) or _recorded_epochs(files) or default_epochs
    return RunStatus(run_dir.name, state, len(rows), epochs, accuracy, detail)


def _state(files: RunFiles, summary: RunSummary | None, rows: list, problem: str) -> tuple[Status, str]:
    """(state, detail) of a run: what its summary says, else whether a process holds it, else how far it got.
    An unreadable summary.json is named in the detail: the next sweep retrains the run."""
    if summary is not None and summary_is_complete(files, summary):
        return Status.COMPLETED, ""
    if summary is not None and summary.status == Status.FAILED:
        return Status.FAILED, summary.reason or ""
    if summary is not None and summary.status == Status.PRUNED:
        return (
            Status.PRUNED,
            f"pruned by kdtemp search after epoch {summary.pruned_epoch}; a sweep trains it in full",
        )
    if is_locked_elsewhere(files.lock):
        return Status.RUNNING, _owner(files)
    if problem:
        return Status.INTERRUPTED, problem
    if rows:
        return Status.INTERRUPTED, f"resumes after epoch {len(rows) - 1} on the next sweep"
    return Status.PENDING, ""


def _recorded_epochs(files: RunFiles) -> int | None:
    """The student epochs the run's config.yaml records (the sweep's --epochs), if readable."""
    try:
        record = yaml.safe_load(files.config.read_text())
        return int(record["experiment"]["student"]["epochs"])
    except (OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError, ValueError):
        return None


def _natural(run_id: str) -> list:
    """Sort key that puts constant-T3 before constant-T10."""
    return [
        (0, float(part), "") if index % 2 else (1, 0.0, part)
        for index, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", run_id))
    ]


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
