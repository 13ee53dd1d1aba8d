"""A sweep as a Slurm job array, submitted through submitit (an existing engine, not a scheduler of our
own): one array task per work unit, each a `sweep(config, only=its runs)`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from kdtemp.config.schema import ExperimentConfig, config_to_dict
from kdtemp.errors import ConfigError, KDTempError, first_line
from kdtemp.events import Emit, Note, Progress, Submitted, SweepResult, ignore
from kdtemp.store.files import check_writable, read_summary
from kdtemp.store.layout import ExperimentLayout
from kdtemp.store.records import FINISHED
from kdtemp.sweep.plan import planned_runs
from kdtemp.sweep.runner import sweep
from kdtemp.sweep.units import POLL_SECONDS, combine, work_units


class UnitJob:
    """One Slurm array task: `sweep(config, only=run_ids)`. Requeued (and resumed) on pre-emption or
    timeout."""

    def __init__(self, config_tree: dict, run_ids: list[str], force: bool):
        self.config_tree, self.run_ids, self.force = config_tree, run_ids, force

    def __call__(self) -> dict:
        config = ExperimentConfig.model_validate(self.config_tree)
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "?"))
        task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
        result = sweep(config, force=self.force, only=set(self.run_ids), worker=f"slurm job {job}_{task}")
        # a requeued task resumes, it does not start over: force applies to the first attempt only
        self.force = False
        return asdict(result)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on SIGUSR2 (time limit, pre-emption): requeue the same task; it resumes."""
        import submitit

        self.force = False
        return submitit.helpers.DelayedSubmission(self)


def job_config_tree(config: ExperimentConfig) -> dict:
    """The config each array task validates: the sweep's own, its device included.

    A CUDA device needs GPUs in the job: asking for one with slurm_gpus_per_job 0 would fail in every
    task, so it is refused here, before anything is submitted.
    """
    if config.device.startswith("cuda") and not config.launcher.slurm_gpus_per_job:
        raise ConfigError(
            f"device {config.device} needs a GPU in each Slurm job, but slurm_gpus_per_job is 0; "
            "pass --slurm-gpus-per-job 1 (or set launcher.slurm_gpus_per_job)"
        )
    return config_to_dict(config)


def _executor(config: ExperimentConfig):
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'kdtemp[slurm]'") from None
    logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct warnings are noise without accounting
    launcher = config.launcher
    folder = ExperimentLayout.of(config.runs_dir, config.name).root / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    parameters = {
        "timeout_min": launcher.slurm_time,
        "slurm_array_parallelism": launcher.slurm_array_parallelism,
        "cpus_per_task": launcher.slurm_cpus_per_job,
        "name": f"kdtemp-{config.name}",
    }
    if launcher.slurm_partition:
        parameters["slurm_partition"] = launcher.slurm_partition
    if launcher.slurm_gpus_per_job:
        parameters["gpus_per_node"] = launcher.slurm_gpus_per_job
    if launcher.slurm_mem_gb:
        parameters["mem_gb"] = launcher.slurm_mem_gb
    executor.update_parameters(**parameters)
    return executor


def launch_slurm(
    config: ExperimentConfig, force: bool = False, wait: bool = True, emit: Emit = ignore
) -> SweepResult | None:
    """Submit one array task per unit of work (emitting Submitted); wait and show progress unless `wait` is
    False.

    Returns the whole sweep's result once every task has left the queue; None when not waiting.
    """
    started = time.perf_counter()
    tree = job_config_tree(config)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    runs = planned_runs(config)
    planned = len(runs)
    units = work_units(config, force, runs=runs)
    if not units:
        emit(Note(f"{planned} runs planned: all complete"))
        return SweepResult(
            planned, planned, 0, 0, 0, seconds=time.perf_counter() - started, experiment_dir=layout.root
        )
    check_writable(layout.root)
    if config.device == "auto" and not config.launcher.slurm_gpus_per_job:
        cores = config.launcher.slurm_cpus_per_job
        emit(
            Note(
                f"Slurm jobs get no GPU (slurm_gpus_per_job 0): they train on {cores} CPU core(s) each",
                "warning",
            )
        )
    executor = _executor(config)
    jobs = []
    try:
        with executor.batch():  # one job array, a task per unit
            for unit in units:
                jobs.append(executor.submit(UnitJob(tree, unit, force)))
    except Exception as exc:  # sbatch missing, rejected, or no controller
        raise KDTempError(
            "submitting to Slurm failed "
            f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}); "
            "check `sinfo` and --slurm-partition"
        ) from None
    array_id = jobs[0].job_id.split("_")[0]
    emit(Submitted(array_id, len(jobs), sum(len(unit) for unit in units), Path(executor.folder)))
    if not wait:
        return None
    pending_runs = sum(len(unit) for unit in units)
    while True:
        states = queue_states(array_id)
        done = sum(1 for run_id in (r for unit in units for r in unit) if _finished(layout, run_id))
        counts = (
            ", ".join(f"{count} {state.lower()}" for state, count in sorted(_count(states).items()))
            or "none queued"
        )
        emit(Progress("runs", f"slurm array {array_id}: {counts}", done, pending_runs))
        if not states:
            break
        time.sleep(POLL_SECONDS)
    results, problems = [], []
    for job in jobs:
        try:
            results.append(SweepResult(**{**job.result(), "experiment_dir": layout.root}))
        except Exception as exc:  # cancelled, killed, or failed: what it finished is on disk
            message = first_line(exc, limit=10_000)
            problems.append(f"job {job.job_id} did not finish ({message[:200]})")
    for problem in problems:
        emit(Note(f"{problem}; run the same command again to resume its runs", "warning"))
    return combine(results, planned, time.perf_counter() - started, layout.root)


def _finished(layout: ExperimentLayout, run_id: str) -> bool:
    summary = read_summary(layout.run_dir(run_id))
    return summary is not None and summary.status in FINISHED


def _count(states: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def queue_states(array_id: str) -> dict[str, str]:
    """{task id: state} of the array's tasks still in Slurm's queue (squeue); empty when all have left."""
    try:
        output = subprocess.run(
            ["squeue", "-h", "-r", "-j", array_id, "-o", "%i %T"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states
