"""The base of every config model: its own module so that kdtemp.config and kdtemp.temperature
can both build on it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors, and a validated config never changes under our feet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
