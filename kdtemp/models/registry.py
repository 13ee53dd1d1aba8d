"""The model registry: a spec's `arch` name to the builder of its nn.Module, shaped by the data.

Builders register with `@register_model(*names)`; the package's __init__ imports the built-in nets
and the CIFAR zoo, so the registry is full once `kdtemp.models` is imported. Users' own networks
(`torchvision:NAME`, `module:callable`) are built by kdtemp.models.custom.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from torch import nn

from kdtemp.config.model_specs import CustomSpec, ModelSpec
from kdtemp.errors import ConfigError
from kdtemp.models.custom import build_custom

Builder = Callable[[ModelSpec, tuple[int, ...], int], nn.Module]


_BUILDERS: dict[str, Builder] = {}


_Spec = TypeVar("_Spec", bound="ModelSpec")


_SpecBuilder = Callable[[_Spec, tuple[int, ...], int], nn.Module]


def register_model(*names: str) -> Callable[[_SpecBuilder[_Spec]], _SpecBuilder[_Spec]]:
    def decorate(builder: _SpecBuilder[_Spec]) -> _SpecBuilder[_Spec]:
        for name in names:
            # a builder takes its own spec class: build_model calls it for the arch names it registered
            _BUILDERS[name] = cast(Builder, builder)
        return builder

    return decorate


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build `spec.arch` for inputs of `input_shape` (without the batch dimension)."""
    if isinstance(spec, CustomSpec):
        return build_custom(spec, tuple(input_shape), num_classes)
    try:
        builder = _BUILDERS[spec.arch]
    except KeyError:
        raise ConfigError(f"unknown arch {spec.arch!r}; choose one of {', '.join(model_names())}") from None
    return builder(spec, tuple(input_shape), num_classes)
