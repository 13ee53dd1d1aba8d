"""What a network costs to keep and to run: parameters, bytes, forward FLOPs and latency.

This is why anyone distils at all: the report puts the student's accuracy next to how much smaller
and faster it is than its teacher.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

WARMUP, REPEATS = 3, 15


def forward_flops(model: nn.Module, batch: torch.Tensor) -> int | None:
    """Forward FLOPs per sample, counted by torch's FlopCounterMode (matmuls and convolutions);
    None if it cannot."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batch)
        return int(counter.get_total_flops() // len(batch))
    except Exception:  # an op the counter does not know: the field is simply left out
        return None


def interleaved_latency_ms(
    roles: Sequence[Sequence[nn.Module]], batch: torch.Tensor, device: torch.device
) -> list[float]:
    """Median wall time of one forward pass of `batch` through each role's models (summed over an ensemble).

    The roles take turns within every repeat (student, teacher, student, teacher, ...), so a change in
    the machine's load while the sweep trains slows both alike and their ratio, the report's "x faster",
    stays put; timing one after the other let a busy moment land on one side only.
    """
    timings: list[list[float]] = [[] for _ in roles]
    with torch.no_grad():
        for index in range(WARMUP + REPEATS):
            for role, models in enumerate(roles):
                total = 0.0
                for model in models:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    model(batch)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    total += time.perf_counter() - start
                if index >= WARMUP:
                    timings[role].append(1000 * total)
    return [statistics.median(role_timings) for role_timings in timings]


def _sizes(models: Sequence[nn.Module], batch: torch.Tensor) -> dict:
    for model in models:
        model.eval()
    flops = [forward_flops(model, batch) for model in models]
    return {
        "params": sum(count_parameters(model) for model in models),
        "size_bytes": sum(size_bytes(model) for model in models),
        "flops": None if any(f is None for f in flops) else sum(flops),
    }


def student_and_teacher(
    student: nn.Module, teachers: Sequence[nn.Module], batch: torch.Tensor, device: torch.device
) -> dict:
    """The summary.json fields: student_* and teacher_* for params, size_bytes, latency_ms and flops."""
    roles = {"student": [student], "teacher": list(teachers)}
    fields: dict = {"latency_batch_size": len(batch)}
    for role, models in roles.items():
        for name, value in _sizes(models, batch).items():
            fields[f"{role}_{name}"] = value
    for role, latency in zip(
        roles, interleaved_latency_ms(list(roles.values()), batch, device), strict=False
    ):
        fields[f"{role}_latency_ms"] = latency
    return fields


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers: what a saved state dict weighs."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
