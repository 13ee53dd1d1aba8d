"""How much does a busy CPU slow kdtemp? The README's teacher and a 12-run sweep, idle and beside a
competing job, with kdtemp's OpenMP wait setting against OpenMP's default, in one run.

The competitor is what a shared machine holds: a 2-thread torch matmul loop, started before each busy
measurement and stopped after it (bounded in time either way). Every job runs as a user runs it, the
`kdtemp` command in a fresh process, so the wait setting made before torch loads applies:

    kdtemp      the command as shipped: it measures the other load for 0.25 s before a training job and,
                when other work keeps half a CPU or more busy, sets OMP_WAIT_POLICY=PASSIVE
                (kdtemp.engine.threads); idle, it leaves OpenMP's default
    default     GNU OpenMP's default spin, GOMP_SPINCOUNT=300000, whatever the load (kdtemp before)

It prints each job's wall time idle (the fastest of two, the policies alternating) and busy, busy / idle
(a fair share of two cores beside a 2-thread competitor is about 2x) and kdtemp idle / default idle.

    python benchmarks/busy_cpu.py                    # teacher (30 epochs) + 12 runs, about 10 minutes
    python benchmarks/busy_cpu.py --epochs 10        # shorter student runs

This is a benchmark, not a test: it trains real models and prints its figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

COMPETITOR = """
import sys, time, torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a @ a
"""
POLICIES = {
    "kdtemp": {},
    "default": {"GOMP_SPINCOUNT": "300000"},
}
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def timed(command: list[str], environ: dict, cwd: Path, busy: bool, limit: float) -> float:
    """Wall seconds of `command`, with the competitor running beside it when `busy`."""
    competitor = None
    if busy:
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(limit)])
        time.sleep(2.0)  # let it reach full speed
    try:
        started = time.perf_counter()
        done = subprocess.run(command, env=environ, cwd=cwd, capture_output=True, text=True, timeout=limit)
        seconds = time.perf_counter() - started
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30, help="student epochs of the 12-run sweep")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--limit", type=float, default=900.0, help="seconds any one job may take")
    parser.add_argument(
        "--idle-rounds", type=int, default=2, help="idle measurements per policy (the fastest counts)"
    )
    args = parser.parse_args()
    base = {key: value for key, value in os.environ.items() if key not in WAIT_VARIABLES}
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; competitor: a 2-thread torch matmul loop"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdtemp-busy-") as scratch:
        work = Path(scratch)
        data = f"data.root={work / 'data'}"
        # MNIST-1D generated once, outside every measurement
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kdtemp",
                "train-teacher",
                "--epochs",
                "1",
                "--name",
                "warm",
                "--set",
                data,
            ],
            env=base,
            cwd=work,
            check=True,
            capture_output=True,
        )
        # idle: the policies alternate, twice, and the faster of each pair counts (the first job after the
        # warm-up ran slower whichever policy it had); busy: once each, the competitor dominates
        schedule = [(policy, False) for _ in range(args.idle_rounds) for policy in POLICIES]
        schedule += [(policy, True) for policy in POLICIES]
        for round_index, (policy, busy) in enumerate(schedule):
            environ = {**base, **POLICIES[policy]}
            name = f"{policy}-{'busy' if busy else 'idle'}-{round_index}"
            teacher = ["train-teacher", "--epochs", str(args.teacher_epochs), "--name", name]
            teacher += ["--set", data]
            grid = [
                "sweep",
                "--name",
                name,
                "--temps",
                "1,2,4,8",
                "--seeds",
                "0,1,2",
                "--epochs",
                str(args.epochs),
                "--set",
                "kd.baseline=false",
                "--set",
                data,
            ]
            for job, command in (("teacher", teacher), ("12-run sweep", grid)):
                kdtemp = [sys.executable, "-m", "kdtemp", *command]
                seconds = timed(kdtemp, environ, work, busy, args.limit)
                rows.append((job, policy, busy, seconds))
                state = "busy" if busy else "idle"
                print(f"  {job:<13} {policy:<8} {state}: {seconds:7.1f} s", flush=True)
    times: dict[tuple, float] = {}
    for job, policy, busy, seconds in rows:
        times[(job, policy, busy)] = min(seconds, times.get((job, policy, busy), seconds))
    print()
    print(f"{'job':<14}{'policy':<9}{'idle s':>8}{'busy s':>8}{'busy/idle':>11}{'idle vs default':>17}")
    for job in ("teacher", "12-run sweep"):
        for policy in POLICIES:
            idle, busy = times[(job, policy, False)], times[(job, policy, True)]
            versus = idle / times[(job, "default", False)]
            print(f"{job:<14}{policy:<9}{idle:8.1f}{busy:8.1f}{busy / idle:10.2f}x{versus:16.2f}x")


if __name__ == "__main__":
    main()
