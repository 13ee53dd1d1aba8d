"""What the stacked engine asks of a network before it stacks copies of it: dropout, and grouped rounding."""

from __future__ import annotations

from torch import nn


def has_dropout(model: nn.Module) -> bool:
    """Whether training draws random masks: such students can only share a group with their own seed."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def vmap_rounds_by_group(model: nn.Module) -> bool:
    """Whether `vmap` over K stacked copies of `model` rounds differently for different K.

    vmap makes a convolution with stacked weights one grouped convolution, whose input and
    weight gradients (and batch norm's input gradient) round differently with the number of groups;
    linear layers become batched matmuls whose rows do not depend on their neighbours.
    """
    kinds = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)
    return any(isinstance(m, kinds) for m in model.modules())
