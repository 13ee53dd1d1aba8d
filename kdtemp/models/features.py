"""Hint (feature) distillation, FitNets (Romero et al. 2015): which layer's output is the hint, and the
regressor that maps the student's feature onto the teacher's.

Features are captured with forward hooks, so no model is edited. The default feature is the
penultimate one: the input of every kdtemp model's final `classifier` layer, or of the last
nn.Linear of a torchvision or user's network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdtemp.errors import ConfigError


def feature_module(model: nn.Module, layer: str | None, role: str) -> tuple[nn.Module, bool]:
    """(module, capture its input?): the final linear layer's input for the default, else the named
    module's output."""
    if layer is None:
        return final_linear(model, role), True
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        names = ", ".join(name for name in modules if name)
        raise ConfigError(f"kd.feature_layers.{role}: no layer named {layer!r}; the {role} has: {names}")
    return modules[layer], False


def final_linear(model: nn.Module, role: str) -> nn.Linear:
    """The layer whose input is the penultimate feature: `classifier` when it is linear (every kdtemp
    model), else the last nn.Linear registered (torchvision's `fc`, a user's head)."""
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return classifier
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"the {role} has no nn.Linear layer whose input would be its penultimate feature; "
            f"name the hint layer in kd.feature_layers.{role}"
        )
    return linears[-1]


class FeatureCapture:
    """Records one layer's feature on every forward pass of `model`, through a hook."""

    def __init__(self, model: nn.Module, layer: str | None, role: str = "student"):
        module, capture_input = feature_module(model, layer, role)
        self.values: list[torch.Tensor] = []
        if capture_input:
            self.handle = module.register_forward_pre_hook(lambda _module, args: self.values.append(args[0]))
        else:
            self.handle = module.register_forward_hook(
                lambda _module, _args, output: self.values.append(output)
            )

    def pop(self) -> torch.Tensor:
        return self.values.pop()

    def remove(self) -> None:
        self.handle.remove()
        self.values.clear()


def feature_shape(model: nn.Module, layer: str | None, example: torch.Tensor, role: str) -> tuple[int, ...]:
    """The per-sample shape of a layer's feature, from one eval-mode forward pass."""
    capture = FeatureCapture(model, layer, role)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
        return tuple(capture.pop().shape[1:])
    finally:
        capture.remove()
        model.train(was_training)


def build_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """A linear map for vector features, a 1x1 convolution for feature maps of the same resolution."""
    if len(student_shape) != len(teacher_shape):
        raise ConfigError(
            f"hint features differ in kind: student {student_shape}, teacher {teacher_shape}; "
            "set kd.feature_layers to layers of the same kind (both vectors or both feature maps)"
        )
    if len(student_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    if student_shape[1:] != teacher_shape[1:]:
        raise ConfigError(
            f"hint feature maps differ in resolution: student {student_shape}, teacher {teacher_shape}; "
            "set kd.feature_layers to layers of one resolution"
        )
    if len(student_shape) == 2:
        return nn.Conv1d(student_shape[0], teacher_shape[0], kernel_size=1)
    if len(student_shape) == 3:
        return nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
    raise ConfigError(
        f"hint features of shape {student_shape} are not supported; use vectors or feature maps"
    )


def predict_features(
    model: nn.Module, layer: str | None, inputs: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """A layer's eval-mode feature for every input, in chunks, on `device`: the teacher's hint targets."""
    capture = FeatureCapture(model, layer, "teacher")
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size].to(device))
                outputs.append(capture.pop().float())
    finally:
        capture.remove()
    return torch.cat(outputs)


@dataclass(frozen=True)
class Hint:
    """FitNets hint settings of a group: weight * MSE(regressor(student feature), teacher feature)."""

    weight: float
    student_layer: str | None
    teacher_shape: tuple[int, ...]
