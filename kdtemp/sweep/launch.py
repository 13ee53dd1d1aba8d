"""Spread a sweep over processes: local workers (one per GPU, or CPU cores split) or a Slurm job array.

The unit of work is a lockstep group: the runs of one seed (cut by train.max_group_size) with their
later born-again generations, so a teacher pass stays shared within a unit. Each unit is trained by
`sweep(config, only=its runs)` in its own process. Per-run locks, resume and atomic writes make a
repeated or requeued unit harmless, and a run's numbers do not depend on which process trained it.
Slurm jobs are submitted through submitit (an existing engine, not a scheduler of our own).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queues
import signal
import subprocess
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from kdtemp.config.schema import ExperimentConfig, config_to_dict
from kdtemp.engine.device import resolve_device
from kdtemp.errors import ConfigError, KDTempError, first_line
from kdtemp.events import Emit, Event, Note, Progress, Submitted, SweepResult, ignore
from kdtemp.sweep.plan import RunSpec, group_runs
from kdtemp.engine.job_setup import StopCheck
from kdtemp.store.records import FINISHED
from kdtemp.store.files import ExperimentLayout, check_writable, is_completed, read_summary
from kdtemp.sweep.runner import planned_runs, sweep

POLL_SECONDS = 1.0


def work_units(
    config: ExperimentConfig, force: bool = False, at_least: int = 1, runs: list[RunSpec] | None = None
) -> list[list[str]]:
    """Run ids per unit of work, for the runs still to train; split further until there are `at_least`.

    `runs`: the planned runs when the caller has them (planning hashes every teacher checkpoint)."""
    runs = planned_runs(config) if runs is None else runs
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    by_id = {run.run_id: run for run in runs}

    def root(run: RunSpec) -> RunSpec:
        while run.parent is not None:
            run = by_id[run.parent]
        return run

    lineages: dict[str, list[RunSpec]] = {}
    for run in runs:
        if force or not is_completed(layout.run_dir(run.run_id)):
            lineages.setdefault(root(run).run_id, []).append(run)
    groups = group_runs(
        [by_id[root_id] for root_id in lineages], config.train.max_group_size, across_seeds=False
    )
    while len(groups) < at_least and any(len(group) > 1 for group in groups):
        largest = max(groups, key=len)
        groups.remove(largest)
        groups += [largest[: len(largest) // 2], largest[len(largest) // 2 :]]
    return [[run.run_id for root_run in group for run in lineages[root_run.run_id]] for group in groups]


def combine(results: list[SweepResult], planned: int, seconds: float, experiment_dir: Path) -> SweepResult:
    """One SweepResult for the whole sweep from its units' results."""
    trained = sum(r.resumed + r.started for r in results)
    return SweepResult(
        planned=planned,
        skipped=planned - trained - sum(len(r.busy) for r in results),
        resumed=sum(r.resumed for r in results),
        started=sum(r.started for r in results),
        completed=sum(r.completed for r in results),
        failed=[f for r in results for f in r.failed],
        busy=[b for r in results for b in r.busy],
        seconds=seconds,
        experiment_dir=experiment_dir,
    )


# --- local workers -------------------------------------------------------------------------------


def worker_devices(config: ExperimentConfig) -> list[str]:
    """One device per worker: the listed ones ('all' = every GPU), else `workers` copies of the sweep's
    device."""
    launcher = config.launcher
    if launcher.devices:
        if launcher.devices == ["all"]:
            if not torch.cuda.is_available():
                raise ConfigError(
                    "--devices all asks for every GPU, but CUDA is not available here; use --workers N on CPU"
                )
            devices = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        else:
            devices = list(launcher.devices)
        for device in devices:
            resolve_device(device)  # a clear error for a device that is not there
        if launcher.workers and launcher.workers != len(devices):
            raise ConfigError(
                f"--workers {launcher.workers} and {len(devices)} --devices disagree; give one of them"
            )
        return devices
    return [config.device] * (launcher.workers or 1)


def launch_local(
    config: ExperimentConfig, force: bool = False, should_stop: StopCheck = None, emit: Emit = ignore
) -> SweepResult:
    """Train the sweep's units in worker processes, one per device; CPU workers split the cores.

    The workers' notes and progress reach `emit` here, labelled with the worker.
    """
    started = time.perf_counter()
    devices = worker_devices(config)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    runs = planned_runs(config)
    planned = len(runs)
    units = work_units(config, force, at_least=len(devices), runs=runs)
    if not units:
        emit(Note(f"{planned} runs planned: all complete"))
        return SweepResult(
            planned, planned, 0, 0, 0, seconds=time.perf_counter() - started, experiment_dir=layout.root
        )
    check_writable(layout.root)
    threads = threads_per_worker(os.cpu_count() or 1, len(devices))
    emit(
        Note(
            f"{len(units)} units of work over {len(devices)} workers ({', '.join(devices)}), "
            f"{threads} CPU thread(s) each"
        )
    )
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    assignments = [units[index :: len(devices)] for index in range(len(devices))]
    processes = []
    for index, (device, assigned) in enumerate(zip(devices, assignments, strict=False)):
        if not assigned:
            continue
        run_ids = [run_id for unit in assigned for run_id in unit]
        worker = f"worker {index} ({device})"
        process = context.Process(
            target=_worker_main,
            name=worker,
            daemon=False,
            args=(config_to_dict(config), device, run_ids, force, threads, worker, events),
        )
        process.start()
        processes.append(process)
    results, errors = [], []
    finished = 0
    while finished < len(processes):
        try:
            kind, worker, payload = events.get(timeout=0.5)
        except queues.Empty:
            if all(not p.is_alive() for p in processes) and events.empty():
                break  # a worker died without a word (killed): what it finished is on disk
            continue
        if kind == "event":
            emit(_prefixed(payload, worker))
        elif kind == "result":
            results.append(payload)
            finished += 1
        elif kind == "error":
            errors.append(f"{worker}: {payload}")
            finished += 1
        elif kind == "stopped":
            finished += 1
    for process in processes:
        process.join()
    if should_stop is not None and should_stop():
        from kdtemp.engine.loop import StopRequested

        raise StopRequested
    if errors:
        raise KDTempError("; ".join(errors))
    return combine(results, planned, time.perf_counter() - started, layout.root)


def threads_per_worker(cpu_count: int, workers: int) -> int:
    """The cores split between the workers, GPU workers too: their data loading and Python are on the CPU."""
    return max(1, cpu_count // max(workers, 1))


def cuda_index(device: str) -> int | None:
    """N of 'cuda:N'; None for any other device ('cuda' alone means the current one)."""
    kind, _, index = device.partition(":")
    return int(index) if kind == "cuda" and index else None


def _prepare_worker(device: str, threads: int) -> None:
    """A worker's share of the CPU, and its GPU made current, so no library call lands on cuda:0."""
    torch.set_num_threads(threads)
    index = cuda_index(device)
    if index is not None:
        torch.cuda.set_device(index)


def _prefixed(event: Event, worker: str) -> Event:
    """A worker's event, labelled with the worker so that bars and notes of several workers do not mix."""
    if isinstance(event, Progress):
        return Progress(
            f"{worker}:{event.task}", f"{worker}: {event.description}", event.completed, event.total
        )
    if isinstance(event, Note):
        return Note(f"{worker}: {event.text}", event.level)
    return event


def _worker_main(
    config_tree: dict, device: str, run_ids: list[str], force: bool, threads: int, worker: str, events
) -> None:
    """A worker process: train its runs and report events, its result, or its error, through the queue."""
    _prepare_worker(device, threads)
    stop = {"requested": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)  # Ctrl-C reaches the whole process group: stop after the step
    config = ExperimentConfig.model_validate({**config_tree, "device": device})
    from kdtemp.engine.loop import StopRequested

    try:
        result = sweep(
            config,
            force=force,
            should_stop=lambda: stop["requested"],
            only=set(run_ids),
            worker=worker,
            emit=lambda event: events.put(("event", worker, event)),
        )
        events.put(("result", worker, result))
    except StopRequested:
        events.put(("stopped", worker, None))
    except KDTempError as exc:
        events.put(("error", worker, str(exc)))
    except Exception as exc:  # a bug: send its traceback rather than die silently
        events.put(("error", worker, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


# --- Slurm, through submitit -----------------------------------------------------------------------


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


def run_sweep(
    config: ExperimentConfig,
    force: bool = False,
    should_stop: StopCheck = None,
    wait: bool = True,
    emit: Emit = ignore,
) -> SweepResult | None:
    """`kdtemp sweep`: in this process, in local workers, or as a Slurm job array, as config.launcher says.

    None only for a Slurm array not waited for (`wait` False): its Submitted event says where it went.
    """
    if config.launcher.name == "slurm":
        return launch_slurm(config, force, wait, emit)
    if config.launcher.workers or config.launcher.devices:
        return launch_local(config, force, should_stop, emit)
    return sweep(config, force=force, should_stop=should_stop, emit=emit)
