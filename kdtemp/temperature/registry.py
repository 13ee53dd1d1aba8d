"""The schedule registry: `@register_schedule` makes a class a kd.schedules name, and a kd.schedules
entry (a name, a mapping of name and parameters, or a user's module:function) becomes its schedule.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, cast

from pydantic import (
    PlainValidator,
    SerializeAsAny,
)
from pydantic_core import PydanticCustomError

from kdtemp.temperature.base import ScheduleBase
from kdtemp.temperature.custom import UserSchedule

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
        return UserSchedule.model_validate(value)
    if name not in SCHEDULES:
        context = {"discriminator": "'name'", "tag": name, "expected_tags": schedule_choices()}
        raise PydanticCustomError("union_tag_invalid", "unknown schedule {tag}", context)
    return SCHEDULES[name].model_validate(value)


ScheduleSpec = Annotated[SerializeAsAny[ScheduleBase], PlainValidator(_schedule_from_entry)]
"""A kd.schedules entry as the config holds it: any registered schedule or a UserSchedule."""
