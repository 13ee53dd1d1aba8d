"""What both GPU scripts measure with: device syncs, peak memory, and the grid's students as engine members."""

from __future__ import annotations

import gc

import torch

from kdtemp.engine.loop import Member

ALPHA = 0.9
MiB = 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MiB if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def kd_member(temperature: float | None, seed: int, steps: int) -> Member:
    """A constant-T student (alpha ALPHA) for `steps` steps, as sweep plans one; None: the no-KD baseline."""
    if temperature is None:
        return Member(seed, 0.0, torch.ones(steps), distills=False)
    return Member(seed, ALPHA, torch.full((steps,), float(temperature)), t0=float(temperature))
