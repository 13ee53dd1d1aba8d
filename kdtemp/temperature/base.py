"""What every temperature schedule is: `ScheduleBase` (clamps, granularity, label, the run-id identity)
and the per-step table a run's temperatures are read from.

With E student epochs and 0-based epoch e, progress is p = e / (E - 1) (0 when E = 1). A schedule
with `granularity: step` evaluates its progress-based formulas at p = step / (total_steps - 1), and
its epoch-based formulas at the fractional epoch e = step / steps_per_epoch, so a milestone at epoch
m fires at the first step of epoch m. Each schedule's own formula is in kdtemp/temperature/schedules.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import (
    PositiveFloat,
    model_validator,
)

from kdtemp.strict import StrictModel

LOW_TEMPERATURE = 0.5
PLAIN_KD, CTKD, LOGIT_STD = "kd", "ctkd", "logit-std"
"""The KD methods a schedule trains with (ScheduleBase.method)."""

Point = tuple[float, float]
"""(progress p, possibly fractional epoch e) of one optimisation step or epoch."""


def progress(epoch: int, epochs: int) -> float:
    """p = e / (E - 1), and 0 for a one-epoch run."""
    return 0.0 if epochs <= 1 else epoch / (epochs - 1)


def default_milestones(epochs: int) -> list[int]:
    """Half and three quarters of the way, E//2 and 3E//4, each once and never epoch 0.

    A milestone at 0 would train the first epoch below the t0 it is labelled with, and for short
    runs the two fractions coincide (E = 2: both 1), so repeats and zeros are dropped.
    """
    return sorted({milestone for milestone in (epochs // 2, 3 * epochs // 4) if milestone >= 1})


class ScheduleBase(StrictModel):
    """What every schedule accepts: clamps, how often T changes, and a label for tables.

    A subclass adds `name: Literal["x"] = "x"`, its parameters and `temperature`; `@register_schedule`
    then makes "x" a kd.schedules name (config validation, error messages and "did you mean" follow).
    """

    method: ClassVar[str] = PLAIN_KD
    """The KD method that trains with it: KD reads its table, CTKD learns T, logit-std z-scores logits."""
    absolute: ClassVar[bool] = False
    """True when it sets absolute temperatures: it ignores the grid's t0 and runs once per seed."""

    if TYPE_CHECKING:
        name: str

    t_min: PositiveFloat | None = None
    t_max: PositiveFloat | None = None
    granularity: Literal["epoch", "step"] = "epoch"
    label: str | None = None
    """Name in CSVs and tables; defaults to the schedule name (plus its parameters if repeated)."""

    @model_validator(mode="after")
    def _clamps_ordered(self):
        if self.t_min is not None and self.t_max is not None and self.t_min > self.t_max:
            raise ValueError(f"t_min ({self.t_min}) is above t_max ({self.t_max})")
        return self

    @property
    def display_name(self) -> str:
        """What tables call it when no label is given."""
        return self.name

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        """T at progress p and (possibly fractional) epoch e of `epochs`, before the clamps."""
        raise NotImplementedError(f"{type(self).__name__} must define temperature()")

    def clamp(self, value: float) -> float:
        if self.t_min is not None:
            value = max(value, self.t_min)
        if self.t_max is not None:
            value = min(value, self.t_max)
        return value

    def curve(self, t0: float, points: Sequence[Point], epochs: int) -> list[float]:
        """The clamped T at each point of one run, in training order."""
        return [self.clamp(self.temperature(t0, p, epoch, epochs)) for p, epoch in points]

    def lowest(self, t0: float, epochs: int, steps_per_epoch: int) -> float:
        """The lowest T the run trains at (what the low-temperature warning looks at)."""
        return float(temperature_table(self, t0, epochs, steps_per_epoch).min())

    def grid_t0s(self, temperatures: list[float]) -> list[float]:
        """The t0 values it runs at: every grid temperature, unless it sets absolute ones."""
        return list(temperatures)

    def revision(self, epochs: int) -> int:
        """2 where its temperatures differ from the first release's, else 1.

        Run ids hash it (kdtemp/sweep/plan.py) only when it is 2, so runs trained with the old
        temperatures are never taken for finished runs of the new ones, while every unaffected run
        keeps its id. Revision 2 fixed epoch-based formulas at step granularity (they lagged the real
        epoch) and the default step milestones of one- and two-epoch runs (they repeated, or fell on
        epoch 0)."""
        return 1

    def identity(self, epochs: int) -> dict[str, Any]:
        """What run ids hash of it: every parameter but the label, and a formula revision above 1."""
        params = self.model_dump(mode="json", exclude={"label"})
        if self.revision(epochs) > 1:
            params["revision"] = self.revision(epochs)
        return params

    def check(self, epochs: int) -> None:
        """Refuse, before anything is written, a schedule that cannot run; validation covers the built-ins."""


# --- a run's temperatures ------------------------------------------------------------------------


def temperature_table(schedule: ScheduleBase, t0: float, epochs: int, steps_per_epoch: int) -> torch.Tensor:
    """The temperature for every optimisation step of a run, shape (epochs * steps_per_epoch,).

    Precomputed so the engine reads T by indexing a device tensor, never by asking the host. At step
    granularity epoch-based formulas see the real fractional epoch step / steps_per_epoch: the
    fraction p * (E - 1) would lag it, firing a milestone at epoch 2 of 4 at step 266 of 400, not 200.
    """
    total = epochs * steps_per_epoch
    points: list[Point] = []
    for step in range(total):
        if schedule.granularity == "step":
            points.append((0.0 if total <= 1 else step / (total - 1), step / steps_per_epoch))
        else:
            epoch = step // steps_per_epoch
            points.append((progress(epoch, epochs), epoch))
    return torch.tensor(schedule.curve(t0, points, epochs), dtype=torch.float32)


def epoch_temperatures(schedule: ScheduleBase, t0: float, epochs: int) -> list[float]:
    """T per epoch at epoch granularity: what a reader checks the CSV against."""
    return schedule.curve(t0, [(progress(e, epochs), e) for e in range(epochs)], epochs)
