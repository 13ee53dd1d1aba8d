"""Where a temperature is computed: schedules as pure functions of training progress.

Each schedule is one class below: its parameters, their checks and its formula, `temperature`.
`@register_schedule` makes a class a `kd.schedules` name; `module:function` names a user's own
(kdtemp/temperature/custom.py). `temperature_table` (kdtemp/temperature/base.py) turns any of them
into a run's per-step T.

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
- module:function   T = function(t0, p, e, **params): a user's own, called through custom.py

Any schedule may be clamped to [t_min, t_max].
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from kdtemp.temperature.base import CTKD, LOGIT_STD, ScheduleBase, default_milestones
from kdtemp.temperature.registry import register_schedule

DEFAULT_GAMMA = 0.9


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
