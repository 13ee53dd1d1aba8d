"""The model registry: a spec's `arch` name to the builder of its nn.Module, shaped by the data.

Builders register with `@register_model(*names)`; the package's __init__ imports the built-in nets
and the CIFAR zoo, so the registry is full once `kdtemp.models` is imported. Users' own networks
(`torchvision:NAME`, `module:callable`) are built by kdtemp.models.custom.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast, get_args

from torch import nn

from kdtemp.config.model_specs import (
    TEXT_SPECS,
    CustomSpec,
    EmbeddingBagSpec,
    HFConfigSpec,
    HFSpec,
    ModelSpec,
    TransformerSpec,
)
from kdtemp.errors import ConfigError
from kdtemp.models.custom import build_custom
from kdtemp.models.huggingface import build_from_config, build_saved
from kdtemp.models.text import build_embedding_bag, build_transformer
from kdtemp.strict import StrictModel

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
    """Every plain arch name a spec may give: the registered builders' and the built-in text archs'."""
    text_archs = {arch for spec in TEXT_BUILDERS for arch in get_args(spec.model_fields["arch"].annotation)}
    return sorted({*_BUILDERS, *text_archs})


TEXT_BUILDERS: dict[type[StrictModel], Callable[..., nn.Module]] = {
    EmbeddingBagSpec: build_embedding_bag,
    TransformerSpec: build_transformer,
    HFSpec: build_saved,
    HFConfigSpec: build_from_config,
}
TEXT_ARCHS = "embedding-bag, transformer, hf:<folder> or hf-config"


def build_model(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None
) -> nn.Module:
    """Build `spec.arch` for inputs of `input_shape` (without the batch dimension); `vocab_size` for text
    data (token ids), None for float inputs. A text arch on float data, or the reverse, is refused."""
    if isinstance(spec, TEXT_SPECS):
        if vocab_size is None:
            raise ConfigError(
                f"{spec.arch} reads token ids, but the data holds {tuple(input_shape)} float inputs; "
                "use it with data.dataset: text (or token ids in a tensors file)"
            )
        return TEXT_BUILDERS[type(spec)](spec, tuple(input_shape), num_classes, vocab_size)
    if isinstance(spec, CustomSpec):
        return build_custom(spec, tuple(input_shape), num_classes, vocab_size)
    if vocab_size is not None:
        raise ConfigError(
            f"{spec.arch} takes float inputs, but the data is text (token ids); choose {TEXT_ARCHS}"
        )
    try:
        builder = _BUILDERS[spec.arch]
    except KeyError:
        raise ConfigError(f"unknown arch {spec.arch!r}; choose one of {', '.join(model_names())}") from None
    return builder(spec, tuple(input_shape), num_classes)
