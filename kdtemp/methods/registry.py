"""The registry of KD methods: the built-in ones in the order their terms are summed, then users'.

Where each lives: plain KD and the ensemble's soft targets, `soft_targets.py` (Hinton et al. 2015);
logit standardisation and its effective temperature, `logit_std.py` (Sun et al. 2024); CTKD's learned
temperature and its penalty, `ctkd.py` (Li et al. 2023); FitNets hints, `hints.py` (Romero et al.
2015). The pure math they call is in `kdtemp/losses.py`; a scheduled temperature,
`kdtemp/temperature/schedules.py`.

Adding a method is one file with a `KDMethod` subclass and one line in `METHODS`; a member uses it
when its `Member.methods` names it (`kdtemp.sweep.runner.member_for` maps a run to its methods). The
order of `METHODS` is the order in which temperatures pass through methods and terms are added to the
loss. A user's `module:Class` (kd.methods) is imported and registered here; run ids hash its source.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence

from kdtemp.errors import ConfigError
from kdtemp.methods.base import GroupSetting, KDMethod
from kdtemp.methods.ctkd import LearnableTemperature
from kdtemp.methods.hints import Hints
from kdtemp.methods.logit_std import LogitStandardization
from kdtemp.methods.soft_targets import SoftTargets
from kdtemp.plugins import (
    import_callable,  # the same module:callable rule as archs and schedules
)

METHODS: list[type[KDMethod]] = [SoftTargets, LogitStandardization, LearnableTemperature, Hints]
"""Every method a group may use, in the order their terms are summed: ce, kd, penalty, feature, ..."""


def register_method(method: type[KDMethod]) -> type[KDMethod]:
    """Adds a method after the built-in ones (usable as a class decorator); its name must be new."""
    if any(known.name == method.name for known in METHODS):
        raise ConfigError(f"a KD method named {method.name!r} is already registered; give yours another name")
    METHODS.append(method)
    return method


def resolve_methods(references: Sequence[str]) -> list[type[KDMethod]]:
    """The `module:Class` KD methods of kd.methods, imported and registered (once), in the given order.

    Refused in one line: a module that does not import, a name that is not a KDMethod subclass, or a
    method whose `name` another registered method already has."""
    resolved = []
    for reference in references:
        try:
            target = import_callable(reference)
        except ConfigError as exc:
            raise ConfigError(f"kd.methods: {exc}") from None
        if not (isinstance(target, type) and issubclass(target, KDMethod)) or not hasattr(target, "name"):
            raise ConfigError(
                f"kd.methods: {reference} is not a KD method; give a subclass of kdtemp.methods.KDMethod "
                "with a `name`"
            )
        if target not in METHODS:
            register_method(target)
        resolved.append(target)
    return resolved


def source_digest(method: type[KDMethod]) -> str:
    """sha256 of the method class's source: run ids hash it, so an edited method trains new runs."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError) as exc:
        raise ConfigError(
            f"kd.methods: cannot read the source of {method.__name__} ({exc}); define it in a .py file"
        ) from None
    return hashlib.sha256(source.encode()).hexdigest()


def methods_for(members: Sequence, group: GroupSetting) -> list[KDMethod]:
    """The methods a group of `members` trains with, in registry order (those no member uses are left out)."""
    built = (method.for_group(members, group) for method in METHODS)
    return [method for method in built if method is not None]
