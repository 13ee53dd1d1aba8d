"""Where a temperature is computed: schedules as pure functions of training progress.

Each schedule is one class below: its parameters, their checks and its formula, `temperature`.
`@register_schedule` makes a class a `kd.schedules` name; `module:function` names a user's own
(kdtemp/temperature/custom.py). `temperature_table` turns any of them into a run's per-step T.

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
- module:function   T = function(t0, p, e, **params): a user's own, called through user_schedules.py

Any schedule may be clamped to [t_min, t_max].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, cast

import torch
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PlainValidator,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kdtemp.strict import StrictModel

DEFAULT_GAMMA = 0.9
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


# --- the extension point -------------------------------------------------------------------------


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

        Run ids hash it (plan.py) only when it is 2, so runs trained with the old temperatures are never
        taken for finished runs of the new ones, while every unaffected run keeps its id. Revision 2 fixed
        epoch-based formulas at step granularity (they lagged the real epoch) and the default step
        milestones of one- and two-epoch runs (they repeated, or fell on epoch 0)."""
        return 1

    def identity(self, epochs: int) -> dict[str, Any]:
        """What run ids hash of it: every parameter but the label, and a formula revision above 1."""
        params = self.model_dump(mode="json", exclude={"label"})
        if self.revision(epochs) > 1:
            params["revision"] = self.revision(epochs)
        return params

    def check(self, epochs: int) -> None:
        """Refuse, before anything is written, a schedule that cannot run; validation covers the built-ins."""


SCHEDULES: dict[str, type[ScheduleBase]] = {}
"""Every registered schedule by name: what kd.schedules accepts besides a user's module:function."""

S = TypeVar("S", bound=type[ScheduleBase])


def register_schedule(cls: S) -> S:
    """Class decorator: make the class's default `name` a kd.schedules name."""
    field = cast("type[ScheduleBase]", cls).model_fields.get("name")
    name = field.default if field is not None else None
    if not isinstance(name, str) or not name or ":" in name:
        raise TypeError(f"{cls.__name__} needs name: Literal['x'] = 'x' (no ':') to be registered")
    if SCHEDULES.get(name, cls) is not cls:
        raise ValueError(f"two schedules are named {name!r}: {SCHEDULES[name].__name__} and {cls.__name__}")
    SCHEDULES[name] = cls
    return cls


def schedule_choices() -> str:
    """The names kd.schedules accepts, as error messages list them."""
    return ", ".join(repr(name) for name in SCHEDULES) + " or module:function (your own)"


def _schedule_from_entry(value: Any) -> ScheduleBase:
    """Build the schedule a kd.schedules entry names: a registered name, or module:function."""
    if isinstance(value, ScheduleBase):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise PydanticCustomError("schedule_type", "a schedule is a name, or a mapping of name and params")
    name = value.get("name")
    if name is None:
        raise PydanticCustomError(
            "schedule_name", "every schedule needs a name: one of {choices}", {"choices": schedule_choices()}
        )
    if isinstance(name, str) and ":" in name:
        from kdtemp.temperature.custom import UserSchedule  # a subclass of ScheduleBase: no top-level import

        return UserSchedule.model_validate(value)
    if name not in SCHEDULES:
        context = {"discriminator": "'name'", "tag": name, "expected_tags": schedule_choices()}
        raise PydanticCustomError("union_tag_invalid", "unknown schedule {tag}", context)
    return SCHEDULES[name].model_validate(value)


ScheduleSpec = Annotated[SerializeAsAny[ScheduleBase], PlainValidator(_schedule_from_entry)]
"""A kd.schedules entry as the config holds it: any registered schedule or a UserSchedule."""


# --- the built-in schedules ----------------------------------------------------------------------


@register_schedule
class ConstantSchedule(ScheduleBase):
    name: Literal["constant"] = "constant"

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        return t0


@register_schedule
class LinearSchedule(ScheduleBase):
    name: Literal["linear"] = "linear"
    t_end: PositiveFloat = 1.0

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        return t0 + (self.t_end - t0) * progress


@register_schedule
class ExpSchedule(ScheduleBase):
    """T = t0 * gamma**epoch, or T = t0 * final_ratio**progress when final_ratio is given."""

    name: Literal["exp"] = "exp"
    gamma: PositiveFloat | None = None
    final_ratio: PositiveFloat | None = None

    @model_validator(mode="after")
    def _gamma_or_ratio(self):
        if self.gamma is not None and self.final_ratio is not None:
            raise ValueError("give gamma or final_ratio, not both")
        return self

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        if self.final_ratio is not None:
            return t0 * self.final_ratio**progress
        return t0 * (self.gamma if self.gamma is not None else DEFAULT_GAMMA) ** epoch

    def revision(self, epochs: int) -> int:
        """gamma is epoch-based: revision 2 at step granularity, where it lagged the real epoch."""
        return 2 if self.final_ratio is None and self.granularity == "step" else 1


@register_schedule
class CosineSchedule(ScheduleBase):
    name: Literal["cosine"] = "cosine"
    t_end: PositiveFloat = 1.0

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        return self.t_end + (t0 - self.t_end) * (1 + math.cos(math.pi * progress)) / 2


@register_schedule
class StepSchedule(ScheduleBase):
    name: Literal["step"] = "step"
    milestones: list[NonNegativeInt] | None = None
    """Epochs at which T is multiplied by factor; None: half and three quarters of the way, the distinct
    values of E//2 and 3E//4 that are >= 1 (default_milestones)."""
    factor: PositiveFloat = 0.5

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        milestones = self.milestones if self.milestones is not None else default_milestones(epochs)
        passed = sum(1 for milestone in milestones if milestone <= epoch)
        return t0 * self.factor**passed

    def revision(self, epochs: int) -> int:
        """Revision 2 at step granularity (milestones lagged the real epoch) and for the default milestones
        of one- and two-epoch runs (they repeated, or fell on epoch 0)."""
        return 2 if self.granularity == "step" or (self.milestones is None and epochs <= 2) else 1


@register_schedule
class StagesSchedule(ScheduleBase):
    """Piecewise-constant absolute temperatures: [[start_progress, T], ...], first start 0."""

    absolute: ClassVar[bool] = True
    name: Literal["stages"] = "stages"
    stages: Annotated[
        list[tuple[Annotated[float, Field(ge=0, le=1)], PositiveFloat]], Field(min_length=1)
    ] = [(0.0, 1.0), (0.3, 3.0), (0.8, 1.5)]

    @field_validator("stages")
    @classmethod
    def _starts_increase(cls, stages):
        starts = [start for start, _ in stages]
        if starts[0] != 0:
            raise ValueError("the first stage must start at progress 0")
        if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            raise ValueError("stage starts must increase")
        return stages

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        value = self.stages[0][1]
        for start, temperature in self.stages:
            if progress >= start:
                value = temperature
        return value

    def grid_t0s(self, temperatures: list[float]) -> list[float]:
        return [self.stages[0][1]]


@register_schedule
class LearnableSchedule(ScheduleBase):
    """CTKD (Li et al. 2023): T = t_min + t_range * sigmoid(theta), theta trained adversarially.

    Its table holds the starting temperature t0; the trained value lives in the engine.
    """

    method: ClassVar[str] = CTKD
    name: Literal["learnable"] = "learnable"
    t_min: PositiveFloat = 1.0
    t_range: PositiveFloat = 20.0
    lambda_max: NonNegativeFloat = 1.0
    curriculum_epochs: PositiveInt = 10
    penalty: NonNegativeFloat = 0.0
    """Weight of penalty * (T - t_target)**2, the regularised variant; 0 = off."""
    t_target: PositiveFloat | None = None

    @model_validator(mode="after")
    def _penalty_has_target(self):
        if self.penalty > 0 and self.t_target is None:
            raise ValueError("penalty needs t_target (the temperature it pulls towards)")
        return self

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        return t0

    def lowest(self, t0: float, epochs: int, steps_per_epoch: int) -> float:
        return self.t_min


@register_schedule
class LogitStdSchedule(ScheduleBase):
    """Per-sample temperature from z-scored logits (Sun et al. 2024 logit standardization)."""

    method: ClassVar[str] = LOGIT_STD
    name: Literal["logit-std"] = "logit-std"

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        return t0


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
