"""Users' own temperature schedules: `kd.schedules: [{name: "module:function", ...params}]`.

The function is imported as custom archs are (kdtemp/plugins.py), called as
`function(t0, progress, epoch, **params)` and checked before anything is written: it must import,
its source must be readable (run ids hash it, so an edited function never passes for the old one),
and it must return a finite number > 0. Each refusal is one `ConfigError` line naming the fix.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ConfigDict, field_validator

from kdtemp.errors import ConfigError, first_line
from kdtemp.plugins import CALLABLE_REFERENCE, import_callable
from kdtemp.temperature.base import Point, ScheduleBase

Formula = Callable[[float, float, float], Any]
"""A user's schedule as called: (t0, progress, epoch) -> T, its params already bound."""


class UserSchedule(ScheduleBase):
    """A schedule of your own, `name: module:function`; its entry's other keys are its params.

    Plain form `def f(t0, progress, epoch, **params) -> float`; class form: a class built with the
    params once per run, whose `temperature(t0, progress, epoch)` may keep state between steps.
    t_min, t_max, granularity and label mean what they mean for any schedule.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @field_validator("name")
    @classmethod
    def _reference(cls, value: str) -> str:
        if not CALLABLE_REFERENCE.match(value):
            raise ValueError("a schedule of your own is module:function (a dotted module, one function name)")
        return value

    @property
    def display_name(self) -> str:
        return self.name.partition(":")[2]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def temperature(self, t0: float, progress: float, epoch: float, epochs: int) -> float:
        raise NotImplementedError("a user schedule is evaluated through curve(), one formula per run")

    def curve(self, t0: float, points: Sequence[Point], epochs: int) -> list[float]:
        formula = self._formula()  # one per run: a class form's state starts afresh
        return [self.clamp(self._evaluate(formula, t0, p, epoch)) for p, epoch in points]

    def identity(self, epochs: int) -> dict[str, Any]:
        """Its params and its source's sha256: an edited function gives new run ids, never mixed results."""
        return {**super().identity(epochs), "source_sha256": self.source_digest()}

    def check(self, epochs: int) -> None:
        """It imports, its source can be hashed, and at t0 = 1 it gives T > 0 at the start, middle and end."""
        self.source_digest()
        last = max(epochs - 1, 0)
        self.curve(1.0, [(0.0, 0), (0.5, last / 2), (1.0, last)], epochs)

    def source_digest(self) -> str:
        try:
            source = inspect.getsource(self._target())
        except (OSError, TypeError) as exc:
            problem = f"cannot read its source ({first_line(exc)}); define it in a .py file"
            raise self._refusal(problem) from None
        return hashlib.sha256(source.encode()).hexdigest()

    def _target(self) -> Callable[..., Any]:
        try:
            return import_callable(self.name)
        except ConfigError as exc:
            raise ConfigError(f"kd.schedules: {exc}") from None

    def _formula(self) -> Formula:
        target, params = self._target(), self.params
        if not inspect.isclass(target):
            return functools.partial(target, **params)
        try:
            instance = target(**params)
        except Exception as exc:
            raise self._refusal(
                f"building it with {sorted(params)} failed ({type(exc).__name__}: "
                f"{first_line(exc)}); fix its keys in kd.schedules"
            ) from None
        method = getattr(instance, "temperature", None)
        if not callable(method):
            raise self._refusal("a class needs a method temperature(self, t0, progress, epoch)")
        return method

    def _evaluate(self, formula: Formula, t0: float, p: float, epoch: float) -> float:
        where = f"at t0={t0:g}, progress={p:g}, epoch={epoch:g}"
        try:
            value = formula(t0, p, epoch)
        except Exception as exc:
            raise self._refusal(
                f"raised {type(exc).__name__} ({first_line(exc)}) {where}; "
                "fix the function or its keys in kd.schedules"
            ) from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self._refusal(f"returned a {type(value).__name__} {where}; return a float > 0")
        if not math.isfinite(value) or value <= 0:
            raise self._refusal(f"returned {float(value)!r} {where}; return a finite temperature > 0")
        return float(value)

    def _refusal(self, problem: str) -> ConfigError:
        return ConfigError(f"kd.schedules: {self.name} {problem}")
