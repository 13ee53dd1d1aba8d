"""kdtemp's random draws, kept off the caller's global RNG.

torch draws weight inits and dropout masks from its global generators (the CPU one, one per CUDA
device). A run must get the draws its seed gives it alone, and a notebook user who seeded torch
before a sweep must find their generators where they left them. So the library draws only in
forked state: `seeded` for a network's initial weights, `DropoutStream` for a training loop's
masks, `keeps_global_rng` for networks built or run only to probe shapes, sizes or vmap.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar, cast

import torch

P = ParamSpec("P")
R = TypeVar("R")


def _cuda_devices() -> list[int]:
    """The CUDA devices with generators now; none before CUDA starts (seeding them then would be queued)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def caller_rng_kept() -> Iterator[None]:
    """Inside, draws advance torch's global generators as usual; after, the caller's states are back."""
    with torch.random.fork_rng(devices=_cuda_devices()):
        yield


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside, torch's global generators seeded as `torch.manual_seed(seed)` seeds them; after, the caller's
    states back. Only CUDA devices already started are seeded: `torch.manual_seed` would queue the others'."""
    with caller_rng_kept():
        torch.default_generator.manual_seed(seed)
        for index in _cuda_devices():
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def keeps_global_rng(function: Callable[P, R]) -> Callable[P, R]:
    """`function` run in `caller_rng_kept`: for probes whose draws (a throwaway init, a dropout mask)
    matter to no one but would move the caller's generators."""

    @functools.wraps(function)
    def kept(*args: P.args, **kwargs: P.kwargs) -> R:
        with caller_rng_kept():
            return function(*args, **kwargs)

    return kept


class DropoutStream:
    """A training loop's own generator states for dropout, swapped into torch's global ones while it draws.

    Dropout (and vmap's randomness="same") draws from the global generators, so the loop's forward
    pass runs inside `drawing()`: the stream's states in, advanced, and out again, the caller's back.
    The states start as `torch.manual_seed(seed)` leaves them (the CPU generator, and the loop's CUDA
    device's), so the masks are bit for bit those of seeding torch globally at the epoch's start.
    Never held across a yield: the caller's code between events sees its own generators.
    """

    def __init__(self, seed: int, device: torch.device):
        self.cuda = None
        if device.type == "cuda":
            self.cuda = device.index if device.index is not None else torch.cuda.current_device()
        with seeded(seed):
            self.cpu_state = torch.get_rng_state()
            self.cuda_state = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None

    @contextlib.contextmanager
    def drawing(self) -> Iterator[None]:
        caller_cpu = torch.get_rng_state()
        caller_cuda = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda is not None:
            # both CUDA states are set exactly when self.cuda is
            torch.cuda.set_rng_state(cast(torch.Tensor, self.cuda_state), self.cuda)
        try:
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            torch.set_rng_state(caller_cpu)
            if self.cuda is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.cuda)
                torch.cuda.set_rng_state(cast(torch.Tensor, caller_cuda), self.cuda)
