"""Which device a run uses and how much of it a stacked student group may take."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from kdtemp.errors import ConfigError

MEMORY_SHARE = 0.5
"""Fraction of the free device memory a student group may plan to use."""


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; asking for CUDA without it is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec} requested but CUDA is not available here; use --device cpu or --device auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def set_up_device(spec: str, deterministic: bool = False) -> torch.device:
    """The run's device, with the backend settings a run on it wants (see `configure_backends`)."""
    device = resolve_device(spec)
    configure_backends(device, deterministic)
    return device


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Speed on CUDA, or repeatable numbers when `deterministic`.

    CUDA: cuDNN autotuning (our shapes are static, so the benchmark runs once per shape) and TF32
    for float32 matmuls and convolutions. `deterministic` (any device): torch's deterministic
    algorithms, cuDNN's deterministic kernels without autotuning, and the cuBLAS workspace setting
    that makes its reductions repeatable (read when cuBLAS starts, so it is set before any matmul).
    A CPU run that is not deterministic is left as it is.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off inside (float32 matmuls and convolutions at full precision), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def amp_enabled(setting: bool | None, device: torch.device) -> bool:
    """bf16 autocast: on by default for CUDA, never on CPU (slow without bf16 hardware)."""
    if device.type != "cuda":
        return False
    return True if setting is None else setting


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def member_bytes(model: nn.Module, sample_batch: torch.Tensor, optimizer_slots: int) -> int:
    """Rough bytes one stacked student costs: weights, grads, optimizer slots and activations.

    Activations are measured with forward hooks on one batch and doubled for their gradients.
    """
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    activation_bytes = 0

    def count(_module, _inputs, output):
        nonlocal activation_bytes
        if isinstance(output, torch.Tensor):
            activation_bytes += output.numel() * output.element_size()

    hooks = [module.register_forward_hook(count) for module in model.modules() if not list(module.children())]
    try:
        with torch.no_grad():
            model(sample_batch)
    finally:
        for hook in hooks:
            hook.remove()
    return weights * (2 + optimizer_slots) + 2 * activation_bytes


def max_group_size(per_member: int, fixed: int, device: torch.device, limit: int | None) -> int:
    """How many students fit at once in MEMORY_SHARE of the free memory, at least one."""
    budget = free_memory_bytes(device) * MEMORY_SHARE - fixed
    fitting = max(1, int(budget // max(per_member, 1)))
    return min(fitting, limit) if limit else fitting
