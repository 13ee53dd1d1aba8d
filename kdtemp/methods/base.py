"""The small protocol every KD method of a student group implements.

A method (plain KD, FitNets hints, CTKD, logit standardisation, or one of yours) is one class,
instantiated once per student group with the group's members, as mdistiller's distillers are one
module each. At every step the group asks each method, in registration order, for the temperature it
uses (CTKD learns its own), then for its named loss terms: every term has a name, is added to the
members' losses at weight 1 in that order (the order of a floating-point sum is part of the numbers),
and may be logged under its name for the epoch's CSV row. A method that needs hooks on networks owns
them through `hooks()`, a context manager the group enters with its `with` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from kdtemp.data.dataset import Dataset
    from kdtemp.engine.loop import LoopSettings, Member, TeacherSignal
    from kdtemp.models.features import FeatureCapture, Hint

Stacker = Callable[..., Callable]
"""How the group runs a per-member function on stacked (K, ...) tensors: vmap or `each_member`."""


@dataclass(frozen=True)
class GroupSetting:
    """What a method may read of its group when it is built."""

    build_student: Callable[[], nn.Module]
    data: Dataset
    teacher: TeacherSignal
    settings: LoopSettings
    hint: Hint | None = None

    @property
    def device(self) -> torch.device:
        return self.settings.device


@dataclass
class Step:
    """One optimisation step as the methods see it: every tensor on the device, K members first."""

    epoch: int
    logits: torch.Tensor
    """The students' float32 logits, (K, B, C)."""
    targets: torch.Tensor
    teacher_logits: torch.Tensor
    """(n, B, C) shared by the group, or (K, n, B, C) per member."""
    temperature: torch.Tensor
    """(K,): the scheduled temperature after every method's `temperature`."""
    standardize: bool | torch.Tensor = False
    """Which members' logits the KD term z-scores: False, or a (K,) mask (logit-std)."""
    features: torch.Tensor | None = None
    """The students' hint features, (K, B, *F), when a method captures them."""
    teacher_features: torch.Tensor | None = None


@dataclass
class Terms:
    """A method's named terms at one step, each (K,): `added` to the loss, `logged` for the CSV row."""

    added: dict[str, torch.Tensor] = field(default_factory=dict)
    logged: dict[str, torch.Tensor] = field(default_factory=dict)


OptimizerSlice = Callable[[torch.Tensor], dict]
"""Member k's slice of the optimizer state of a stacked tensor."""
RestoreOptimizer = Callable[[torch.Tensor, list[dict]], None]
"""Puts the members' optimizer slices back on a stacked tensor."""


class KDMethod:
    """One KD method of a group; every hook has a do-nothing default, so a method writes only its own."""

    name: ClassVar[str]
    captures_features: ClassVar[bool] = False
    """True for a method whose hooks capture features (`student_capture`, `teacher_captures`)."""

    def __init__(self, members: Sequence[Member], group: GroupSetting):
        self.members = list(members)
        self.group = group

    @classmethod
    def uses(cls, member: Member) -> bool:
        """Whether `member` trains with this method: by default, when it names it in `Member.methods`."""
        return cls.name in member.methods

    @classmethod
    def for_group(cls, members: Sequence[Member], group: GroupSetting) -> KDMethod | None:
        """The method for a group, or None when no member uses it (so no member pays for it)."""
        return cls(members, group) if any(cls.uses(m) for m in members) else None

    # -- building the group --

    def member_built(self, member: Member) -> None:
        """Called right after each member's student is initialised, under that member's seed."""

    def bind(self, student: nn.Module, stack: Stacker) -> None:
        """Called once the students are stacked: their template module and the group's stacker."""

    def hooks(self) -> contextlib.AbstractContextManager:
        """Hooks this method needs on networks, installed on enter and removed on exit."""
        return contextlib.nullcontext()

    @property
    def student_capture(self) -> FeatureCapture | None:
        """A capture the students' forward fills with a feature (FitNets hints), else None."""
        return None

    @property
    def teacher_captures(self) -> list[FeatureCapture] | None:
        """Captures the teacher networks' forward fills, else None."""
        return None

    # -- a step --

    def temperature(self, temperature: torch.Tensor, epoch: int) -> torch.Tensor:
        """The (K,) temperature the KD term uses, given the one before this method (the scheduled one)."""
        return temperature

    def standardizes(self) -> bool | torch.Tensor:
        """Which members' logits the KD term z-scores: False or a (K,) mask."""
        return False

    def terms(self, step: Step) -> Terms:
        """This method's named terms at `step`."""
        return Terms()

    # -- the epoch's CSV row --

    def row_fields(self, k: int, means: dict[str, float]) -> dict[str, Any]:
        """CSV fields for member k from the epoch means of the logged terms (means[name])."""
        return {}

    # -- training state --

    def trained_with_students(self) -> dict[str, torch.Tensor]:
        """Stacked (K, ...) tensors optimised and clipped with the students, by checkpoint name."""
        return {}

    def optimizer_groups(self) -> list[dict]:
        """Further optimizer parameter groups (own settings, not clipped)."""
        return []

    def member_state(self, k: int, optimizer_slice: OptimizerSlice) -> dict[str, Any]:
        """Member k's entries in its checkpoint, beside the group's "model" and "optimizer"."""
        return {}

    def load_member_states(self, states: Sequence[dict], restore: RestoreOptimizer) -> None:
        """Restores this method's tensors from the members' checkpoints, read from their own keys."""
