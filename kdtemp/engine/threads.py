"""How many CPU threads a job uses, and how they wait: chosen from what the process may really use.

`os.cpu_count()` counts the machine's cores, not the ones a process may run on: a Slurm job, a container
with a CPU quota or a `taskset` sees fewer. kdtemp takes the smallest of the CPU affinity, the cgroup
quota and `SLURM_CPUS_PER_TASK`, divided among local workers, unless `train.threads` says otherwise.

Idle OpenMP threads spin before they sleep; GNU OpenMP (the runtime of torch's Linux wheels) spins
300,000 times by default, which on a core another job needs burns that job's time and ours (a
2-thread competitor made a 2-core training run 4x slower, not the fair 2x). `GOMP_SPINCOUNT` bounds the
spin; it is read when torch loads its OpenMP runtime, so the `kdtemp` command sets it in its entry
(kdtemp/cli/entry.py) before torch is imported. A notebook sets it itself, before `import torch`:
`os.environ.update(kdtemp.engine.threads.wait_environment(os.environ))`.

Pure standard library: the CLI's entry imports this before torch exists.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SPIN_COUNT = "3000"
"""GOMP_SPINCOUNT kdtemp sets: idle no slower than the default by more than a few percent in a one-off
measurement on 2 cores, and a fair share beside a competing job (docs/speed.md, benchmarks/busy_cpu.py)."""
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""A user who sets any of these has chosen a wait policy: kdtemp leaves it alone."""
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str
    """Where the number came from, in words: `train.threads`, or each limit found."""


def wait_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to set before torch loads OpenMP: GOMP_SPINCOUNT, unless the user chose a policy."""
    if any(name in environ for name in WAIT_VARIABLES):
        return {}
    return {"GOMP_SPINCOUNT": SPIN_COUNT}


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPUs a cgroup quota allows (quota / period), from cgroup v2's cpu.max or v1's cfs files; None
    without a quota."""
    try:
        limit, window = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(window)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def affinity_cpus() -> int | None:
    """The CPUs this process may be scheduled on (taskset, cpusets); None where the OS cannot say."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def choose_threads(
    requested: int | None,
    workers: int = 1,
    environ: Mapping[str, str] = os.environ,
    affinity: int | None = None,
    quota: float | None = None,
    cpu_count: int | None = None,
) -> ThreadChoice:
    """Intra-op threads for one process of `workers`: `requested` (train.threads) when given, else the
    smallest of the affinity, the cgroup quota (rounded up: 1.5 CPUs keep 2 threads busy) and
    SLURM_CPUS_PER_TASK, divided by `workers`, at least 1."""
    if requested is not None:
        return ThreadChoice(requested, "train.threads")
    limits = {"CPUs on the machine": cpu_count or os.cpu_count() or 1}
    if affinity is not None:
        limits["CPU affinity"] = affinity
    if quota is not None:
        limits["cgroup CPU quota"] = max(1, math.ceil(quota))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    where, cpus = min(limits.items(), key=lambda item: item[1])
    threads = max(1, cpus // max(workers, 1))
    share = f", shared by {workers} workers" if workers > 1 else ""
    return ThreadChoice(threads, f"{where}: {cpus}{share}")


def thread_choice(requested: int | None, workers: int = 1) -> ThreadChoice:
    """`choose_threads` with what this process sees: its affinity, its cgroup quota, its environment."""
    return choose_threads(requested, workers, os.environ, affinity_cpus(), cgroup_cpus())
