"""FitNets hints (Romero et al. 2015): weight * MSE(regressor(student feature), teacher feature).

Each member has its own regressor (a linear map or 1x1 convolution, kdtemp.models.features.build_regressor),
initialised right after its student under its seed and trained with it. Features are captured with
forward hooks on the students' stacked template and on the teacher networks; the hooks live only
inside the group's `with` block (HintCaptures). Several teachers: the target is their mean feature.
The no-KD baseline takes no hint (weight 0), but gets a regressor like every member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from kdtemp.engine.stacking import stack_modules
from kdtemp.losses import hint_loss
from kdtemp.methods.base import (
    GroupSetting,
    KDMethod,
    OptimizerSlice,
    RestoreOptimizer,
    Stacker,
    Step,
    Terms,
)
from kdtemp.models.features import FeatureCapture, Hint, build_regressor, feature_shape

if TYPE_CHECKING:
    from kdtemp.engine.loop import Member


class HintCaptures:
    """The hooks of one student group's hints (its student template's, each teacher network's), alive
    inside `with`.

    Teacher networks are shared by every group of a sweep: a hook left on one after its group ended
    would append a teacher feature per step to a list nobody reads (gigabytes per group on CIFAR-scale
    features). So hooks are registered on enter and removed, their lists cleared, on exit.
    """

    def __init__(
        self,
        student: nn.Module,
        student_layer: str | None,
        teachers: Sequence[nn.Module],
        teacher_layer: str | None,
    ):
        self._targets = [
            (student, student_layer, "student"),
            *((t, teacher_layer, "teacher") for t in teachers),
        ]
        self._captures: list[FeatureCapture] = []

    def __enter__(self) -> HintCaptures:
        self._captures = [FeatureCapture(model, layer, role) for model, layer, role in self._targets]
        return self

    def __exit__(self, *exc_info) -> None:
        for capture in self._captures:
            capture.remove()
        self._captures = []

    @property
    def student(self) -> FeatureCapture:
        return self._open()[0]

    @property
    def teachers(self) -> list[FeatureCapture]:
        return self._open()[1:]

    def _open(self) -> list[FeatureCapture]:
        if not self._captures:
            raise RuntimeError("hint features are captured only inside `with StudentGroup(...) as group:`")
        return self._captures


class Hints(KDMethod):
    name = "hints"
    captures_features = True

    @classmethod
    def uses(cls, member) -> bool:
        return member.distills

    @classmethod
    def for_group(cls, members, group) -> Hints | None:
        return cls(members, group) if group.hint is not None else None

    def __init__(self, members: Sequence[Member], group: GroupSetting) -> None:
        super().__init__(members, group)
        assert group.hint is not None  # for_group builds Hints only for a group with a hint
        self.hint: Hint = group.hint
        example = group.data.train_x[:2].cpu()
        self.student_shape = feature_shape(group.build_student(), self.hint.student_layer, example, "student")
        self.regressors: list[nn.Module] = []
        self.weight = torch.tensor(
            [self.hint.weight if self.uses(m) else 0.0 for m in self.members], device=group.device
        )
        self.params: dict[str, torch.Tensor] = {}
        """The members' regressors, stacked: (K, ...) per parameter."""

    def member_built(self, member) -> None:
        self.regressors.append(build_regressor(self.student_shape, self.hint.teacher_shape))

    def bind(self, student: nn.Module, stack: Stacker) -> None:
        self.template, self.params, _ = stack_modules(self.regressors, self.group.device)
        teacher = self.group.teacher
        layer = self.hint.student_layer
        self.captures = HintCaptures(student, layer, teacher.networks, teacher.feature_layer)
        self._regress = stack(lambda p, f: functional_call(self.template, p, (f,)), in_dims=(0, 0))

    def hooks(self) -> HintCaptures:
        return self.captures

    @property
    def student_capture(self) -> FeatureCapture:
        return self.captures.student

    @property
    def teacher_captures(self) -> list[FeatureCapture]:
        return self.captures.teachers

    def terms(self, step: Step) -> Terms:
        """`feature`: the MSE, logged as is and added to the loss times the member's hint weight."""
        features, teacher_features = step.features, step.teacher_features
        assert features is not None and teacher_features is not None, "captured while hints are on"
        projected = self._regress(self.params, features.float())
        teacher_axis = teacher_features.dim() - len(self.hint.teacher_shape) - 2
        target = teacher_features.float().mean(dim=teacher_axis)  # several teachers: their mean feature
        feature = hint_loss(projected, target, member_dims=1)
        return Terms(added={"feature": self.weight * feature}, logged={"feature": feature})

    def row_fields(self, k: int, means: dict[str, float]) -> dict[str, Any]:
        return {"train_feature": means["feature"]} if self.uses(self.members[k]) else {}

    def trained_with_students(self) -> dict[str, torch.Tensor]:
        return {f"regressor.{name}": tensor for name, tensor in self.params.items()}

    def member_state(self, k: int, optimizer_slice: OptimizerSlice) -> dict[str, Any]:
        return {"regressor": {name: t[k].detach().clone() for name, t in self.params.items()}}

    def load_member_states(self, states: Sequence[dict], restore: RestoreOptimizer) -> None:
        with torch.no_grad():
            for name, tensor in self.params.items():
                tensor.copy_(torch.stack([s["regressor"][name] for s in states]).to(tensor.device))
