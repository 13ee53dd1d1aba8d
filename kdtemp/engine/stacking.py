"""K modules of one architecture as one: a structure-only template plus stacked parameters and buffers.

`torch.func.functional_call` runs the template with member k's slice of the stacks, and `vmap` runs
all members in one call (the student group's forward), or `each_member` one call per member where
vmap's merged convolutions would round differently from a member alone.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdtemp.errors import first_line


def stack_modules(modules: list[nn.Module], device: torch.device) -> tuple[nn.Module, dict, dict]:
    """(structure-only template on the meta device, stacked parameters, stacked buffers)."""
    template = copy.deepcopy(modules[0]).to("meta")
    for module in template.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # replaces this instance's bound forward (mypy refuses assigning to a method)
            cast(Any, module).forward = batch_norm_in_float32(module.forward)
    params, buffers = stack_module_state(modules)
    params = {name: p.detach().to(device).requires_grad_() for name, p in params.items()}
    return template, params, {name: b.to(device) for name, b in buffers.items()}


def batch_norm_in_float32(
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A BatchNorm forward that normalises in float32 and returns its input's dtype.

    Under vmap, functorch's batch-norm rule builds placeholder weight and bias in the input's dtype
    (bf16 under CUDA autocast) beside the stacked float32 running statistics, and cuDNN refuses the
    mix ("expected scalar type BFloat16 but found Float"). Without autocast the input is float32 and
    this changes nothing.
    """

    def normalise(inputs: torch.Tensor) -> torch.Tensor:
        return forward(inputs.float()).to(inputs.dtype)

    return normalise


def _member_slice(stacked, k: int):
    """Member k of a stacked tensor or of a dict of them: views, so in-place buffer updates reach the
    stack."""
    if isinstance(stacked, dict):
        return {name: tensor[k] for name, tensor in stacked.items()}
    return stacked[k]


def _group_size(stacked) -> int:
    return len(next(iter(stacked.values())) if isinstance(stacked, dict) else stacked)


def each_member(function: Callable, in_dims: tuple[int | None, ...]) -> Callable:
    """`vmap(function, in_dims, randomness="same")` computed by one call per member, stacked.

    vmap turns a conv with stacked weights into one grouped convolution whose rounding depends on the
    group size (measured on CPU: 1e-7 in logits after one step, growing to percent-level test
    accuracy after a few epochs); one call per member runs the ops the member runs alone, so a
    member's numbers cannot depend on its group. Each call starts from the same RNG state, so every
    member draws the dropout mask it would draw alone, as randomness="same" does (the CPU generator,
    and the CUDA ones once CUDA is in use).
    """

    def call(*args):
        count = next(_group_size(a) for a, dim in zip(args, in_dims, strict=False) if dim is not None)
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        outputs = []
        for k in range(count):
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            outputs.append(
                function(
                    *(
                        a if dim is None else _member_slice(a, k)
                        for a, dim in zip(args, in_dims, strict=False)
                    )
                )
            )
        if isinstance(outputs[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*outputs, strict=False))
        return torch.stack(outputs)

    return call


BATCHING_RULE = re.compile(r"batching rule for ([\w.:]+)")
"""How torch warns that vmap runs an op without a batching rule (one slice at a time, inside the vmap)."""


def vmap_failure(modules: list[nn.Module], example: torch.Tensor) -> str | None:
    """Why `vmap` cannot run these modules stacked, or None when it can: one dry forward and backward.

    vmap refuses data-dependent control flow (`if x.sum() > 0:`), `.item()` and some in-place updates;
    such students still train, one member at a time (`each_member`). The probe runs on copies, in
    forked RNG state, so it changes nothing a run will see.
    """
    return probe_vmap(modules, example)[0]


def probe_vmap(modules: list[nn.Module], example: torch.Tensor) -> tuple[str | None, tuple[str, ...]]:
    """(vmap_failure's reason or None, the ops torch warned it has no batching rule for, in order)."""
    template, params, buffers = stack_modules([copy.deepcopy(m) for m in modules], example.device)
    cuda = [example.device] if example.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # each member its own batch, as students of several seeds run: then every activation is batched
            forward = vmap(
                lambda p, b, x: functional_call(template, (p, b), (x,)), in_dims=(0, 0, 0), randomness="same"
            )
            batch = example.expand(len(modules), *example.shape)
            forward(params, buffers, batch).float().sum().backward()
            # evaluation runs in eval mode without grad, where torch takes fast paths (its fused
            # Transformer layer) that have no batching rule; the training forward never meets them
            template.eval()
            with torch.no_grad():
                forward(params, buffers, batch)
        except Exception as exc:  # vmap raises several kinds; any of them means: do not stack
            return first_sentence(first_line(exc, 400), 160), ()
    slow = (BATCHING_RULE.search(str(warning.message)) for warning in caught)
    return None, tuple(dict.fromkeys(match.group(1).rstrip(".") for match in slow if match))


def first_sentence(text: str, limit: int) -> str:
    """`text` up to its first '. ' (torch's messages go on to ask for an issue, with a URL), at most
    `limit` characters."""
    end = text.find(". ")
    return (text if end < 0 else text[:end])[:limit]


def quiet_batching_rule_warnings() -> None:
    """Silence torch's per-call "no batching rule" warnings for the rest of the process, once the probe
    has said so in one notice."""
    warnings.filterwarnings("ignore", message=r".*batching rule.*")
