"""Where a temperature is computed: schedules as pure functions of training progress.

With E student epochs and 0-based epoch e, progress is p = e / (E - 1) (0 when E = 1). A schedule
with `granularity: step` evaluates its progress-based formulas (linear, exp's final_ratio, cosine,
stages) at p = step / (total_steps - 1), and its epoch-based formulas (exp's gamma, step's
milestones) at the fractional epoch e = step / steps_per_epoch, so a milestone at epoch m fires at
the first step of epoch m.

- constant   T = t0
- linear     T = t0 + (t_end - t0) * p
- exp        T = t0 * gamma**e, or t0 * final_ratio**p
- cosine     T = t_end + (t0 - t_end) * (1 + cos(pi * p)) / 2
- step       T = t0 * factor**(number of milestones <= e); milestones default to the distinct values
             of E//2 and 3E//4 that are >= 1 (none for E = 1, [1] for E = 2, [1, 2] for E = 3)
- stages     piecewise-constant absolute temperatures [[start_progress, T], ...]
- learnable  T = t_min + t_range * sigmoid(theta), theta trained through a gradient-reversal layer
             whose weight follows a cosine curriculum from 0 to -lambda_max (CTKD, Li et al. 2023)
- logit-std  T = t0 on z-scored logits: a per-sample effective temperature t0 * std(logits)
             (Sun et al. 2024); the z-scoring itself is `losses.standardize_logits`

Any schedule may be clamped to [t_min, t_max].
"""

from __future__ import annotations

import math

import torch

from kdtemp.config import (
    ConstantSchedule, CosineSchedule, ExpSchedule, LearnableSchedule, LinearSchedule, LogitStdSchedule,
    ScheduleSpec, StagesSchedule, StepSchedule,
)

DEFAULT_GAMMA = 0.9
LOW_TEMPERATURE = 0.5


def progress(epoch: int, epochs: int) -> float:
    """p = e / (E - 1), and 0 for a one-epoch run."""
    return 0.0 if epochs <= 1 else epoch / (epochs - 1)


def default_milestones(epochs: int) -> list[int]:
    """Half and three quarters of the way, E//2 and 3E//4, each once and never epoch 0.

    A milestone at 0 would train the first epoch below the t0 it is labelled with, and for short
    runs the two fractions coincide (E = 2: both 1), so repeats and zeros are dropped.
    """
    return sorted({milestone for milestone in (epochs // 2, 3 * epochs // 4) if milestone >= 1})


def formula_revision(schedule: ScheduleSpec, epochs: int) -> int:
    """2 where this schedule's temperatures differ from the first release's, else 1.

    Run ids hash it (plan.py) only when it is 2, so runs trained with the old temperatures are never
    taken for finished runs of the new ones, while every unaffected run keeps its id. Revision 2 fixed
    epoch-based formulas at step granularity (they lagged the real epoch) and the default step
    milestones of one- and two-epoch runs (they repeated, or fell on epoch 0).
    """
    epoch_based = isinstance(schedule, StepSchedule) or (
        isinstance(schedule, ExpSchedule) and schedule.final_ratio is None)
    if epoch_based and schedule.granularity == "step":
        return 2
    if isinstance(schedule, StepSchedule) and schedule.milestones is None and epochs <= 2:
        return 2
    return 1


def scheduled_temperature(schedule: ScheduleSpec, t0: float, p: float, epoch: float, epochs: int) -> float:
    """T at progress p (and the matching possibly fractional epoch) of `epochs`, clamps applied.

    For `learnable` this is the starting temperature; the trained value lives in the engine.
    """
    if isinstance(schedule, (ConstantSchedule, LogitStdSchedule, LearnableSchedule)):
        value = t0
    elif isinstance(schedule, LinearSchedule):
        value = t0 + (schedule.t_end - t0) * p
    elif isinstance(schedule, ExpSchedule):
        if schedule.final_ratio is not None:
            value = t0 * schedule.final_ratio ** p
        else:
            value = t0 * (schedule.gamma if schedule.gamma is not None else DEFAULT_GAMMA) ** epoch
    elif isinstance(schedule, CosineSchedule):
        value = schedule.t_end + (t0 - schedule.t_end) * (1 + math.cos(math.pi * p)) / 2
    elif isinstance(schedule, StepSchedule):
        milestones = schedule.milestones if schedule.milestones is not None else default_milestones(epochs)
        passed = sum(1 for milestone in milestones if milestone <= epoch)
        value = t0 * schedule.factor ** passed
    elif isinstance(schedule, StagesSchedule):
        value = schedule.stages[0][1]
        for start, temperature in schedule.stages:
            if p >= start:
                value = temperature
    else:  # pragma: no cover - the config's union is exhaustive
        raise TypeError(f"unknown schedule {schedule!r}")
    return clamp(schedule, value)


def clamp(schedule: ScheduleSpec, value: float) -> float:
    if schedule.t_min is not None:
        value = max(value, schedule.t_min)
    if schedule.t_max is not None:
        value = min(value, schedule.t_max)
    return value


def temperature_table(schedule: ScheduleSpec, t0: float, epochs: int, steps_per_epoch: int) -> torch.Tensor:
    """The temperature for every optimisation step of a run, shape (epochs * steps_per_epoch,).

    Precomputed so the engine reads T by indexing a device tensor, never by asking the host. At step
    granularity epoch-based formulas see the real fractional epoch step / steps_per_epoch: the
    fraction p * (E - 1) would lag it, firing a milestone at epoch 2 of 4 at step 266 of 400, not 200.
    """
    total = epochs * steps_per_epoch
    values = []
    for step in range(total):
        epoch = step // steps_per_epoch
        if schedule.granularity == "step":
            p = 0.0 if total <= 1 else step / (total - 1)
            values.append(scheduled_temperature(schedule, t0, p, step / steps_per_epoch, epochs))
        else:
            values.append(scheduled_temperature(schedule, t0, progress(epoch, epochs), epoch, epochs))
    return torch.tensor(values, dtype=torch.float32)


def epoch_temperatures(schedule: ScheduleSpec, t0: float, epochs: int) -> list[float]:
    """T per epoch at epoch granularity: what a reader checks the CSV against."""
    return [scheduled_temperature(schedule, t0, progress(e, epochs), e, epochs) for e in range(epochs)]


def lowest_temperature(schedule: ScheduleSpec, t0: float, epochs: int, steps_per_epoch: int) -> float:
    if isinstance(schedule, LearnableSchedule):
        return schedule.t_min
    return float(temperature_table(schedule, t0, epochs, steps_per_epoch).min())
