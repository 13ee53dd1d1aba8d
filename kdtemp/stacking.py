"""K modules of one architecture as one: a structure-only template plus stacked parameters and buffers.

`torch.func.functional_call` runs the template with member k's slice of the stacks, and `vmap` runs
all members in one call (the student group's forward).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import stack_module_state


def stack_modules(modules: list[nn.Module], device: torch.device) -> tuple[nn.Module, dict, dict]:
    """(structure-only template on the meta device, stacked parameters, stacked buffers)."""
    template = copy.deepcopy(modules[0]).to("meta")
    for module in template.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.forward = batch_norm_in_float32(module.forward)
    params, buffers = stack_module_state(modules)
    params = {name: p.detach().to(device).requires_grad_() for name, p in params.items()}
    return template, params, {name: b.to(device) for name, b in buffers.items()}


def batch_norm_in_float32(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A BatchNorm forward that normalises in float32 and returns its input's dtype.

    Under vmap, functorch's batch-norm rule builds placeholder weight and bias in the input's dtype
    (bf16 under CUDA autocast) beside the stacked float32 running statistics, and cuDNN refuses the
    mix ("expected scalar type BFloat16 but found Float"). Without autocast the input is float32 and
    this changes nothing.
    """

    def normalise(inputs: torch.Tensor) -> torch.Tensor:
        return forward(inputs.float()).to(inputs.dtype)

    return normalise
