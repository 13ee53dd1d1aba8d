"""Importing a user's own code named `module:callable`: custom archs and custom temperature schedules.

One rule for both: the module is imported with the working directory first on sys.path (then
PYTHONPATH), and every failure is one `ConfigError` line naming the reference and the fix.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from kdtemp.errors import ConfigError, first_line

CALLABLE_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
"""`module:callable`: a dotted module name, a colon, one attribute name."""


def import_callable(reference: str) -> Callable[..., Any]:
    """The `callable` of `module:callable`, imported with the working directory first on sys.path."""
    module_name, _, attribute = reference.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may fail to import in any way: report it, not a traceback
        raise ConfigError(
            f"{reference}: cannot import {module_name!r} ({type(exc).__name__}: "
            f"{first_line(exc)}); put it in the working directory or on PYTHONPATH"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    if not hasattr(module, attribute):
        raise ConfigError(f"{reference}: module {module_name!r} has no attribute {attribute!r}")
    target = getattr(module, attribute)
    if not callable(target):
        raise ConfigError(f"{reference}: {attribute!r} is a {type(target).__name__}, not a class or function")
    return target
