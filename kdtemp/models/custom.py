"""Users' own networks: `torchvision:NAME` and `module:callable` archs.

A custom network is checked when it is built, before any job writes a file: it must import, be a
callable that returns an `nn.Module`, and map one example of the data to (1, num_classes) logits.
Each refusal is one `ConfigError` line naming the arch and what to change.
"""

from __future__ import annotations

import inspect
import re
from typing import cast

import torch
from torch import nn

from kdtemp.config.model_specs import CustomSpec
from kdtemp.errors import ConfigError, first_line
from kdtemp.plugins import import_callable

CHANNEL_MISMATCH = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels")
"""How torch's convolutions say an image has another number of channels than their weights."""


def build_custom(
    spec: CustomSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None
) -> nn.Module:
    """Build a user's network for inputs of `input_shape` and `num_classes` classes, checked by a
    dry forward (on token ids 0 when the data is text, `vocab_size` ids)."""
    source, _, name = spec.arch.partition(":")
    if source == "torchvision":
        model = torchvision_model(name, spec.weights, num_classes, spec.kwargs)
        if spec.in_channels is not None:
            with_first_convolution_for(model, spec.in_channels, spec.arch)
    else:
        model = user_model(spec.arch, spec.kwargs, input_shape, num_classes)
    check_logits_shape(model, spec.arch, input_shape, num_classes, text=vocab_size is not None)
    return model


def with_first_convolution_for(model: nn.Module, channels: int, arch: str) -> None:
    """Rebuild the model's first Conv2d for `channels` input channels, in place. Its weights, pretrained or
    not, are summed over the old input channels and spread evenly over the new ones, so gray images
    repeated to RGB and their one channel give the same first activations."""
    found = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ConfigError(f"{arch} has no Conv2d to rebuild for in_channels; remove in_channels")
    name, old = found
    new = nn.Conv2d(
        channels,
        old.out_channels,
        cast(tuple[int, int], old.kernel_size),
        cast(tuple[int, int], old.stride),
        cast(tuple[int, int], old.padding),
        cast(tuple[int, int], old.dilation),
        old.groups,
        old.bias is not None,
        old.padding_mode,
    )
    with torch.no_grad():
        summed = old.weight.sum(dim=1, keepdim=True) / channels
        new.weight.copy_(summed.expand(-1, channels, -1, -1))
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new)


def torchvision_model(name: str, weights: str | None, num_classes: int, kwargs: dict) -> nn.Module:
    """torchvision.models.get_model(name, weights=..., num_classes=...): weights are passed through."""
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"torchvision:{name}: {first_line(exc)}; see torchvision.models.list_models()"
        ) from None
    except (OSError, RuntimeError) as exc:  # weights that must be downloaded, offline, or a broken file
        raise ConfigError(
            f"torchvision:{name} weights {weights}: {first_line(exc)}; download them where there is a "
            "network (torch.hub caches them), or set weights: null and give a trained checkpoint"
        ) from None


def user_model(arch: str, kwargs: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Call the user's builder with `kwargs`, plus num_classes and input_shape when its signature
    takes them."""
    builder = import_callable(arch)
    arguments = dict(kwargs)
    for key, value in (("num_classes", num_classes), ("input_shape", tuple(input_shape))):
        if key not in arguments and _accepts(builder, key):
            arguments[key] = value
    try:
        model = builder(**arguments)
    except Exception as exc:
        raise ConfigError(
            f"{arch}: calling it with {sorted(arguments)} failed ({type(exc).__name__}: {first_line(exc)}); "
            "fix its kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepts(builder, name: str) -> bool:
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_logits_shape(
    model: nn.Module, arch: str, input_shape: tuple[int, ...], num_classes: int, text: bool = False
) -> None:
    """One eval-mode forward on a zero example must give (1, num_classes) logits; the state is
    restored after. A convolution expecting other channels than the images have is refused with the fixes."""
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, *input_shape, dtype=torch.int64 if text else torch.float32))
    except Exception as exc:
        wanted = CHANNEL_MISMATCH.search(str(exc))
        if wanted and len(input_shape) == 3:
            have, expected = input_shape[0], int(wanted.group(1))
            raise ConfigError(
                f"{arch} expects {expected}-channel images, the data has {have} channel(s); set "
                f"data.channels: {expected} (repeats gray images to {expected} channels, for pretrained "
                f"weights) or in_channels: {have} in its spec (rebuilds its first convolution)"
            ) from None
        raise ConfigError(
            f"{arch} cannot run on one input of shape {tuple(input_shape)} "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    finally:
        model.train(was_training)
        model.load_state_dict(state)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != (1, num_classes):
        raise ConfigError(
            f"{arch} gives {shape} for one example, but the data has {num_classes} classes: "
            f"it must return logits of shape (batch, {num_classes})"
        )
