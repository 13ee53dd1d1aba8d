"""What the training loops share: settings, members, the teacher's signal, events, batch orders, autocast.

The engine knows nothing of files or the CLI. Each loop is a generator of events; the caller writes
metrics and checkpoints when an epoch ends. The teacher's loop is kdtemp.engine.trainer; students train
in lockstep in kdtemp.group.student_group.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kdtemp.config.model_specs import TrainingSettings
from kdtemp.data.augmentation import augment_batch, draw_augmentation
from kdtemp.data.dataset import Dataset
from kdtemp.losses import Ensemble, soft_target_log_probs
from kdtemp.temperature.schedules import LearnableSchedule

PROGRESS_EVERY = 20  # steps between progress events
AUGMENT_STREAM = 1
DROPOUT_STREAM = 2


# --- settings, members, teacher signal, events --------------------------------------------------


@dataclass(frozen=True)
class LoopSettings:
    """Everything a training loop needs besides the model and the data."""

    training: TrainingSettings
    batch_size: int
    eval_batch_size: int
    seed: int
    """The single network's seed (batch order, augmentation, dropout); a student group uses its
    members' seeds."""
    device: torch.device
    augment: bool = False
    amp: bool = False
    clip_grad_norm: float | None = None
    channels_last: bool = False

    @property
    def epochs(self) -> int:
        return self.training.epochs


@dataclass(frozen=True)
class Member:
    """One student run as the engine sees it: its knobs of the KD loss, nothing about files."""

    seed: int
    """Fixes the student's initial weights, its batch order, augmentation and dropout masks."""
    alpha: float
    temperatures: torch.Tensor
    """Scheduled temperature per optimisation step, shape (epochs * steps_per_epoch,)."""
    t0: float = 1.0
    standardize: bool = False
    learnable: LearnableSchedule | None = None
    distills: bool = True
    """False for the no-KD baseline: its kd term is not reported."""
    methods: tuple[str, ...] = ()
    """Further KD methods it trains with, by registered name (kdtemp.methods.register_method)."""


@dataclass(frozen=True)
class TeacherSignal:
    """What the teacher contributes to a student group.

    `test_logits` (n_teachers, N_test, C) and `val_logits` are the experiment's teacher(s) on the test
    and validation sets: the reference for agreement and KL. For training, cached logits (and hint
    features) with a teacher axis, (n, N, ...) shared by the group or (K, n, N, ...) with one teacher per
    member (born-again generations); or, when inputs are augmented, `networks` run on every batch.
    """

    test_logits: torch.Tensor
    val_logits: torch.Tensor | None = None
    """(n_teachers, N_val, C) on the validation split; None when there is none."""
    train_logits: torch.Tensor | None = None
    train_features: torch.Tensor | None = None
    networks: tuple[nn.Module, ...] = ()
    per_member: bool = False
    ensemble: Ensemble = "mean_probs"
    weights: torch.Tensor | None = None
    feature_layer: str | None = None
    """The teachers' hint layer, captured from `networks` on each batch (None: penultimate)."""
    channels_last: bool = False
    """Whether `networks` are in channels_last and take their batches so (conv nets on CUDA)."""

    def log_probs(self, split: str) -> torch.Tensor:
        """The teacher's (or ensemble's) predictive log-probabilities at T = 1 on "val" or "test" (the test
        set when there is no validation split)."""
        logits = self.val_logits if split == "val" and self.val_logits is not None else self.test_logits
        return soft_target_log_probs(logits, 1.0, ensemble=self.ensemble, weights=self.weights)


@dataclass(frozen=True)
class StepsDone:
    epoch: int
    step: int
    steps_per_epoch: int


@dataclass(frozen=True)
class EpochDone:
    epoch: int
    metrics: list[dict | None]
    """Per member; None for a member that failed (now or before)."""
    failures: dict[int, str] = field(default_factory=dict)
    """Members that failed in this epoch, with the reason."""


class StopRequested(Exception):
    """Raised between steps when the caller asked to stop (Ctrl-C); finished epochs are safe."""


# --- shared pieces --------------------------------------------------------------------------------


def epoch_order(seed: int, epoch: int, num_samples: int) -> torch.Tensor:
    """The batch order of one epoch, a function of (seed, epoch) alone: a resumed run sees the same
    batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """An independent CPU generator per (seed, epoch, purpose)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7919 + stream)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Image batches (B, C, H, W) in channels_last layout when asked (conv nets on CUDA); anything
    else as is."""
    if channels_last and inputs.dim() == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def dropout_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's dropout masks (a DropoutStream's), a function of (seed, epoch) alone."""
    return int(torch.randint(0, 2**62, (1,), generator=epoch_generator(seed, epoch, DROPOUT_STREAM)))


class EpochBatches:
    """Index batches of one epoch, plus its augmentation draws, all on the device.

    With one seed each batch is (B,) indices. With several seeds batches are (S, B), one row per
    seed in `seeds` order: row s holds the batch order and augmentation that seed draws alone (its
    own generators), so a student group across seeds feeds each member its seed's row.
    """

    def __init__(self, data: Dataset, settings: LoopSettings, epoch: int, seeds: Sequence[int] | None = None):
        num_samples = len(data.train_y)
        seeds = list(seeds) if seeds is not None else [settings.seed]
        self.by_seed = len(seeds) > 1
        orders = torch.stack([epoch_order(seed, epoch, num_samples) for seed in seeds]).to(settings.device)
        self.orders = orders if self.by_seed else orders[0]
        self.batch_size = settings.batch_size
        self.data = data
        self.augmentations = []
        if settings.augment:
            self.augmentations = [
                draw_augmentation(
                    num_samples, epoch_generator(seed, epoch, AUGMENT_STREAM), settings.device, data.pad_value
                )
                for seed in seeds
            ]
        self.channels_last = settings.channels_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.data.train_y), self.batch_size):
            indices = self.orders[..., start : start + self.batch_size]
            inputs = self.data.train_x[indices]
            if self.augmentations and self.by_seed:
                inputs = torch.stack(
                    [
                        augment_batch(rows, row_indices, plan)
                        for rows, row_indices, plan in zip(inputs, indices, self.augmentations, strict=False)
                    ]
                )
            elif self.augmentations:
                inputs = augment_batch(inputs, indices, self.augmentations[0])
            yield indices, to_memory_format(inputs, self.channels_last), self.data.train_y[indices]


# --- one network (teachers) -------------------------------------------------------------------
