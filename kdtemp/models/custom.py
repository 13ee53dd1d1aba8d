"""Users' own networks: `torchvision:NAME` and `module:callable` archs.

A custom network is checked when it is built, before any job writes a file: it must import, be a
callable that returns an `nn.Module`, and map one example of the data to (1, num_classes) logits.
Each refusal is one `ConfigError` line naming the arch and what to change.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from kdtemp.config.model_specs import CustomSpec
from kdtemp.errors import ConfigError, first_line
from kdtemp.plugins import import_callable


def build_custom(spec: CustomSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a user's network for inputs of `input_shape` and `num_classes` classes, checked by a
    dry forward."""
    source, _, name = spec.arch.partition(":")
    if source == "torchvision":
        model = torchvision_model(name, spec.weights, num_classes, spec.kwargs)
    else:
        model = user_model(spec.arch, spec.kwargs, input_shape, num_classes)
    check_logits_shape(model, spec.arch, input_shape, num_classes)
    return model


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


def check_logits_shape(model: nn.Module, arch: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """One eval-mode forward on a zero example must give (1, num_classes) logits; the state is
    restored after."""
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, *input_shape))
    except Exception as exc:
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
