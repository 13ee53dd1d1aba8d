"""From a config to what a job runs with: the device, the data on it, loop settings, and the record
of versions and hardware that goes beside every result."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence

import torch
from torch import nn

import kdtemp
from kdtemp.config.model_specs import ModelSpec
from kdtemp.config.schema import ExperimentConfig
from kdtemp.data.dataset import Dataset
from kdtemp.data.registry import load_dataset
from kdtemp.engine.device import amp_enabled
from kdtemp.engine.loop import LoopSettings
from kdtemp.engine.threads import ThreadChoice, thread_choice, wait_description
from kdtemp.errors import ConfigError
from kdtemp.events import Emit, Note, ignore

StopCheck = Callable[[], bool] | None


def environment_record(device: torch.device) -> dict:
    """Versions, hardware and CPU threads, recorded beside every result for reproducibility."""
    record = {
        "kdtemp": kdtemp.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "device": str(device),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "omp_wait": wait_description(os.environ),
    }
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    return record


def set_up_threads(config: ExperimentConfig, emit: Emit = ignore) -> ThreadChoice:
    """Use the CPU threads the process may really use (or train.threads), and say so once."""
    choice = thread_choice(config.train.threads)
    torch.set_num_threads(choice.threads)
    waiting = wait_description(os.environ)
    emit(Note(f"CPU threads: {choice.threads} ({choice.reason}); idle threads: {waiting}"))
    return choice


def data_on(device: torch.device, config: ExperimentConfig, emit: Emit = ignore) -> Dataset:
    """The dataset on `device`, with a note saying what was loaded."""
    data = load_dataset(config.data)
    if config.data.augment and not data.is_image:
        raise ConfigError(
            f"data.augment crops and flips images; {data.name} holds "
            f"{'texts' if data.is_text else f'sequences {data.input_shape}'}: "
            "set augment: false"
        )
    val = "no val" if data.val_is_test else f"{len(data.split('val')[1])} val"
    emit(
        Note(
            f"{data.name}: {len(data.train_y)} train / {val} / {len(data.test_y)} test, "
            f"{data.num_classes} classes, from {data.source}; validation: {data.validation}"
        )
    )
    for notice in data.notices:
        emit(Note(notice, "warning"))
    return data.to(device)


def wants_channels_last(model: nn.Module | None, device: torch.device) -> bool:
    """channels_last pays for 2-D conv nets on CUDA only."""
    return (
        device.type == "cuda" and model is not None and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


def per_batch_teachers(
    networks: Sequence[nn.Module], device: torch.device
) -> tuple[tuple[nn.Module, ...], bool]:
    """Teacher networks that run on every batch (augmented inputs), and whether they take
    channels_last batches.

    The group's own settings are built without a model, so they never ask for channels_last; the
    teachers' conv layers on CUDA still want it, as their cached-logit pass gets it.
    """
    channels_last = any(wants_channels_last(network, device) for network in networks)
    if channels_last:
        networks = [network.to(memory_format=torch.channels_last) for network in networks]
    return tuple(networks), channels_last


def loop_settings(
    config: ExperimentConfig, spec: ModelSpec, seed: int, device: torch.device, model: nn.Module | None = None
) -> LoopSettings:
    """Engine settings for training `spec`."""
    return LoopSettings(
        training=spec,
        batch_size=config.batch_size(spec),
        eval_batch_size=config.data.eval_batch_size,
        seed=seed,
        device=device,
        augment=config.data.augment,
        amp=amp_enabled(config.train.amp, device),
        clip_grad_norm=config.train.clip_grad_norm,
        channels_last=wants_channels_last(model, device),
    )
