"""How many CPU threads a job uses, and how they wait: chosen from what the process may really use.

`os.cpu_count()` counts the machine's cores, not the ones a process may run on: a Slurm job, a container
with a CPU quota or a `taskset` sees fewer. kdtemp takes the smallest of the CPU affinity, the cgroup
quota and `SLURM_CPUS_PER_TASK`, divided among local workers, unless `train.threads` says otherwise.

Idle OpenMP threads spin before they sleep; GNU OpenMP (the runtime of torch's Linux wheels) spins
300,000 times by default. On an idle machine that spin is what keeps a stacked group's many small
parallel regions fast; on a core another job needs it burns that job's time and ours (a 2-thread
competitor made a 2-core training run 4x slower, not the fair 2x). So the `kdtemp` command measures, for
a quarter of a second before a training job starts, how many CPUs other work keeps busy, and when that
is half a CPU or more it sets OMP_WAIT_POLICY=PASSIVE (threads sleep at once). The policy is read when
torch loads its OpenMP runtime, so this happens in the command's entry (kdtemp/cli/entry.py) before torch
is imported. It changes how threads wait, not what they compute (a teacher trained under ACTIVE and under
PASSIVE gets the same weights bit for bit on this project's CPU: tests/engine/test_threads.py). A
notebook sets it itself, before `import torch`: `os.environ.update(wait_environment(os.environ,
busy_cpus()))`. The thread count is not lowered under load: it would change the numbers.

Pure standard library: the CLI's entry imports this before torch exists.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BUSY = 0.5
"""CPUs kept busy by other work (at the job's start) from which idle threads sleep at once."""
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""A user who sets any of these has chosen a wait policy: kdtemp leaves it alone."""
LOAD_VARIABLE = "KDTEMP_OTHER_CPU_LOAD"
"""Where the entry leaves what it measured, for the job's first note and its config.yaml."""
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str
    """Where the number came from, in words: `train.threads`, or each limit found."""


def wait_environment(environ: Mapping[str, str], others_busy: float | None) -> dict[str, str]:
    """The variables to set before torch loads OpenMP: OMP_WAIT_POLICY=PASSIVE when other work keeps
    `others_busy` >= BUSY CPUs busy; nothing when the machine is idle, unmeasured, or the user chose."""
    if others_busy is None or any(name in environ for name in WAIT_VARIABLES):
        return {}
    measured = {LOAD_VARIABLE: f"{others_busy:.2f}"}
    return {**measured, "OMP_WAIT_POLICY": "PASSIVE"} if others_busy >= BUSY else measured


def busy_cpus(seconds: float = 0.25, stat: Path = Path("/proc/stat")) -> float | None:
    """CPUs other work kept busy over `seconds` (this process sleeps meanwhile), from the kernel's
    counters; None where /proc/stat cannot be read (not Linux)."""
    try:
        first = _cpu_times(stat)
        time.sleep(seconds)
        second = _cpu_times(stat)
    except (OSError, ValueError, IndexError):
        return None
    busy_before, total_before, cpus = first
    busy_after, total_after, _ = second
    elapsed = total_after - total_before
    return 0.0 if elapsed <= 0 else cpus * (busy_after - busy_before) / elapsed


def _cpu_times(stat: Path) -> tuple[int, int, int]:
    """(busy jiffies, all jiffies, CPUs) summed over the machine: busy is all but idle and iowait."""
    lines = stat.read_text().splitlines()
    fields = [int(value) for value in lines[0].split()[1:]]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total, max(cpus, 1)


def wait_description(environ: Mapping[str, str]) -> str:
    """How idle threads wait, and why, for the job's note."""
    load = environ.get(LOAD_VARIABLE)
    policy = environ.get("OMP_WAIT_POLICY")
    if load is not None and policy == "PASSIVE":
        return f"OMP_WAIT_POLICY=PASSIVE: other work kept {load} CPUs busy when the job started"
    chosen = [f"{name}={environ[name]}" for name in WAIT_VARIABLES if name in environ]
    if chosen:
        return ", ".join(chosen) + ("" if load is not None else " (as set)")
    if load is not None:
        return f"OpenMP's default spin: other work kept {load} CPUs busy when the job started"
    return "OpenMP's default spin"


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
    SLURM_CPUS_PER_TASK, divided by `workers` (GPU workers too: their data loading and Python run on the
    CPU), at least 1."""
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
