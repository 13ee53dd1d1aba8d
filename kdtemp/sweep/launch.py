"""Where `kdtemp sweep` runs: in this process, in local workers, or as a Slurm job array.

Each work unit (kdtemp.sweep.units) is trained by `sweep(config, only=its runs)` in its own process.
Per-run locks, resume and atomic writes make a repeated or requeued unit harmless, and a run's
numbers do not depend on which process trained it.
"""

from __future__ import annotations

from kdtemp.config.schema import ExperimentConfig
from kdtemp.engine.job_setup import StopCheck
from kdtemp.events import Emit, SweepResult, ignore
from kdtemp.sweep.local_workers import launch_local
from kdtemp.sweep.runner import sweep
from kdtemp.sweep.slurm import launch_slurm


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
