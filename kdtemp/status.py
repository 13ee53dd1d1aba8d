"""Where each run of a sweep stands, read from its files and locks: what `kdtemp status` prints.

Safe to run while a sweep is going: it only reads, and a run whose lock another process holds is
reported as running, with the worker or Slurm job that holds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kdtemp import runs as R
from kdtemp.config import ExperimentConfig
from kdtemp.sweep import planned_runs

STATES = ("completed", "running", "failed", "interrupted", "pending")


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: str
    epochs_done: int
    epochs: int
    test_acc: float | None
    detail: str = ""
    """Who trains a running run; why a failed run failed; where an interrupted run resumes."""


def _owner(files: R.RunFiles) -> str:
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
    """The state of every run the config plans, in plan order."""
    layout = R.ExperimentLayout.of(config.runs_dir, config.name)
    epochs = config.student.epochs
    statuses = []
    for run in planned_runs(config):
        files = R.RunFiles(layout.run_dir(run.run_id))
        rows = R.read_csv_rows(files.metrics) if files.metrics.exists() else []
        accuracy = _float(rows[-1].get("test_acc")) if rows else None
        summary = R.read_summary(files.dir) or {}
        if R.is_completed(files.dir):
            state, detail = "completed", ""
        elif summary.get("status") == R.FAILED:
            state, detail = "failed", str(summary.get("reason", ""))
        elif R.is_locked_elsewhere(layout.lock_path(run.run_id)):
            state, detail = "running", _owner(files)
        elif rows:
            state, detail = "interrupted", f"resumes after epoch {len(rows) - 1} on the next sweep"
        else:
            state, detail = "pending", ""
        statuses.append(RunStatus(run.run_id, state, len(rows), epochs, accuracy, detail))
    return statuses


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
