"""Experiment trackers a run's numbers are also sent to, behind one small interface.

metrics.csv stays the record the report reads; a logger mirrors it into a viewer (TensorBoard now;
W&B or MLflow would be one more class here and one more `logging:` key). Each run gets its own
logger: every numeric metrics.csv column as a scalar at the epoch, and the temperature at every
optimisation step.

Resume: a logger sees only the epochs trained in this process, so a resumed run adds its new epochs
(TensorBoard reads the new event file after the old one) and never repeats one. A process killed
between an epoch's metrics row and its checkpoint retrains that epoch, and TensorBoard then holds it
twice; metrics.csv does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Protocol

from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import ConfigError

STEP_TEMPERATURE = "temperature_per_step"
"""The per-step T's tag; the `temperature` column (T averaged over the epoch) keeps its own name."""
MISSING_TENSORBOARD = "logging.tensorboard needs the tensorboard package: pip install 'kdtemp[tensorboard]'"


class RunLogger(Protocol):
    """What a sweep or teacher run tells a tracker."""

    def log_epoch(self, row: dict, step: int) -> None:
        """One metrics.csv row at epoch `step`: its numeric cells, each under its column's name."""

    def log_temperatures(self, values: Sequence[float], first_step: int) -> None:
        """T at optimisation steps first_step, first_step + 1, ..."""

    def close(self) -> None:
        """Flush everything to disk."""


class NullLogger:
    """No tracker configured: every call is a no-op."""

    def log_epoch(self, row: dict, step: int) -> None:
        pass

    def log_temperatures(self, values: Sequence[float], first_step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars for TensorBoard through torch.utils.tensorboard, one event directory per run."""

    def __init__(self, directory: Path):
        self.writer = summary_writer_class()(log_dir=str(directory))

    def log_epoch(self, row: dict, step: int) -> None:
        for column, value in numeric_cells(row).items():
            self.writer.add_scalar(column, value, step)

    def log_temperatures(self, values: Sequence[float], first_step: int) -> None:
        for offset, value in enumerate(values):
            self.writer.add_scalar(STEP_TEMPERATURE, float(value), first_step + offset)

    def close(self) -> None:
        self.writer.close()


def numeric_cells(row: dict) -> dict[str, float]:
    """The row's numbers, as metrics.csv would show them: empty cells (None, NaN) and text are left out,
    and so is `epoch`, which is the step itself."""
    return {
        column: float(value)
        for column, value in row.items()
        if column != "epoch"
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not math.isnan(value)
    }


def summary_writer_class():
    """torch.utils.tensorboard.SummaryWriter, imported only when asked for (tensorboard is an optional
    extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(MISSING_TENSORBOARD) from None
    return SummaryWriter


def check_loggers(config: ExperimentConfig) -> None:
    """Refuse a configured tracker whose package is missing, before anything is trained or written."""
    if config.logging.tensorboard:
        summary_writer_class()


def open_run_logger(config: ExperimentConfig, directory: Path) -> RunLogger:
    """The configured tracker for the run whose events go to `directory`."""
    if config.logging.tensorboard:
        return TensorBoardLogger(directory)
    return NullLogger()


@contextmanager
def run_loggers(config: ExperimentConfig, directories: Sequence[Path]) -> Iterator[list[RunLogger]]:
    """One logger per run, all closed (their events flushed) when the block ends, however it ends."""
    with ExitStack() as stack:
        loggers = []
        for directory in directories:
            logger = open_run_logger(config, directory)
            stack.callback(logger.close)
            loggers.append(logger)
        yield loggers
