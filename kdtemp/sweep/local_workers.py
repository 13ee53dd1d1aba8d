"""A sweep spread over local worker processes: one per GPU, or the CPU cores split between them.

Each worker trains its work units with `sweep(config, only=its runs)` and sends its events back
through a queue; Ctrl-C asks every worker to stop after its current step.
"""

from __future__ import annotations

import multiprocessing
import queue as queues
import signal
import time
import traceback

import torch

from kdtemp.config.schema import ExperimentConfig, config_to_dict
from kdtemp.engine.device import resolve_device
from kdtemp.engine.job_setup import StopCheck
from kdtemp.engine.threads import thread_choice
from kdtemp.errors import ConfigError, KDTempError
from kdtemp.events import Emit, Event, Note, Progress, SweepResult, ignore
from kdtemp.store.files import check_writable
from kdtemp.store.layout import ExperimentLayout
from kdtemp.sweep.plan import planned_runs
from kdtemp.sweep.runner import sweep
from kdtemp.sweep.units import combine, work_units


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
    threads = thread_choice(config.train.threads, len(devices)).threads
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
    # the worker's share of the CPU, recorded in its runs' config.yaml
    train = {**config_tree.get("train", {}), "threads": threads}
    config = ExperimentConfig.model_validate({**config_tree, "device": device, "train": train})
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
