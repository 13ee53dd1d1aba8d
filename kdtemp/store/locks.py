"""Per-run locks, so two sweeps (or two workers of one) never train the same run, and the owner record
that says who holds one.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout


class RunLock:
    """An exclusive, non-blocking per-run lock: whoever holds it is the only writer of the run."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(path))

    def acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.is_locked


def is_locked_elsewhere(path: Path) -> bool:
    """True when another process holds the run's lock (it is training right now)."""
    if not path.exists():
        return False
    probe = FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def owner_record(worker: str | None = None) -> dict:
    """Who trains a run: host, pid and worker/job, for `kdtemp status`."""
    record = {"host": socket.gethostname(), "pid": os.getpid()}
    for variable in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        if variable in os.environ:
            record[variable.lower()] = os.environ[variable]
    if worker:
        record["worker"] = worker
    return record
