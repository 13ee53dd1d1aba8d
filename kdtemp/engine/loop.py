"""Training loops and what they share: settings, batch orders, evaluation, the teacher's loop.

The engine knows nothing of files or the CLI. Each loop is a generator of events; the caller writes
metrics and checkpoints when an epoch ends. The stacked loop for students is `student_group`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdtemp.config.schema import TrainingSettings
from kdtemp.data.augmentation import augment_batch, draw_augmentation
from kdtemp.data.dataset import Dataset
from kdtemp.engine.device import full_float32
from kdtemp.engine.metrics import (
    agreement_count,
    calibration_bins,
    correct_count,
    cross_entropy_sum,
    expected_calibration_error,
    teacher_kl_sum,
)
from kdtemp.engine.optim import build_optimizer, learning_rate, set_learning_rate
from kdtemp.engine.randomness import DropoutStream
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

    `test_logits` (n_teachers, N_test, C) are the experiment's teacher(s) on the test set: the
    reference for agreement and KL. For training, cached logits (and hint features) with a teacher
    axis, (n, N, ...) shared by the group or (K, n, N, ...) with one teacher per member (born-again
    generations); or, when inputs are augmented, `networks` run on every batch.
    """

    test_logits: torch.Tensor
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

    def test_log_probs(self) -> torch.Tensor:
        """The teacher's (or ensemble's) predictive log-probabilities at T = 1 on the test set."""
        return soft_target_log_probs(self.test_logits, 1.0, ensemble=self.ensemble, weights=self.weights)


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


def chunks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def evaluation_sums(
    logits: torch.Tensor, targets: torch.Tensor, teacher_log_probs: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Sums over one chunk; accuracy and agreement stay integer counts, exact however many chunks add up."""
    sums = {
        "test_loss": cross_entropy_sum(logits, targets),
        "test_acc": correct_count(logits, targets),
        "calibration": calibration_bins(logits, targets),
    }
    if teacher_log_probs is not None:
        sums["agreement"] = agreement_count(logits, teacher_log_probs)
        sums["test_kl"] = teacher_kl_sum(logits, teacher_log_probs)
    return sums


def finish_evaluation(totals: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Means over the test set, divided in float64: 709 correct of 1000 is 0.709, not float32's 0.70899999."""
    result = {name: value.double() / count for name, value in totals.items() if name != "calibration"}
    result["test_ece"] = expected_calibration_error(totals["calibration"])
    return result


def add_sums(totals: dict[str, torch.Tensor], sums: dict[str, torch.Tensor]) -> None:
    for name, value in sums.items():
        totals[name] = totals[name] + value if name in totals else value


# --- one network (teachers) -------------------------------------------------------------------


class NetworkTrainer:
    """Supervised training of one classifier with cross-entropy: the teacher's loop."""

    def __init__(self, model: nn.Module, data: Dataset, settings: LoopSettings):
        self.settings = settings
        self.data = data
        self.model = model.to(settings.device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(settings.training, [{"params": list(self.model.parameters())}])
        self.steps_per_epoch = steps_per_epoch(len(data.train_y), settings.batch_size)
        self.completed_epochs = 0

    def state(self) -> dict:
        return {
            "epoch": self.completed_epochs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.completed_epochs = int(state["epoch"])

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        with torch.no_grad(), autocast(self.settings.device, self.settings.amp):
            for chunk in chunks(len(self.data.test_y), self.settings.eval_batch_size):
                logits = self.model(
                    to_memory_format(self.data.test_x[chunk], self.settings.channels_last)
                ).float()
                add_sums(totals, evaluation_sums(logits, self.data.test_y[chunk], None))
        self.model.train()
        return {
            name: float(value) for name, value in finish_evaluation(totals, len(self.data.test_y)).items()
        }

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StepsDone | EpochDone]:
        settings, device = self.settings, self.settings.device
        self.model.train()
        for epoch in range(self.completed_epochs, settings.epochs):
            started = time.perf_counter()
            dropout = DropoutStream(dropout_seed(settings.seed, epoch), device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            lr_at_start = learning_rate(settings.training, epoch * self.steps_per_epoch, self.steps_per_epoch)
            for step, (_, inputs, targets) in enumerate(EpochBatches(self.data, settings, epoch)):
                set_learning_rate(
                    self.optimizer,
                    learning_rate(
                        settings.training, epoch * self.steps_per_epoch + step, self.steps_per_epoch
                    ),
                )
                with autocast(device, settings.amp), dropout.drawing():
                    logits = self.model(inputs).float()
                loss = F.cross_entropy(logits, targets)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.clip_grad_norm:
                    nn.utils.clip_grad_norm_(self.model.parameters(), settings.clip_grad_norm)
                self.optimizer.step()
                loss_sum += loss.detach() * len(targets)
                correct += (logits.argmax(-1) == targets).sum()
                if should_stop is not None and should_stop():
                    raise StopRequested
                if (step + 1) % PROGRESS_EVERY == 0:
                    yield StepsDone(epoch, step + 1, self.steps_per_epoch)
            count = len(self.data.train_y)
            train_loss = float(loss_sum) / count
            self.completed_epochs = epoch + 1
            if not math.isfinite(train_loss):
                yield EpochDone(epoch, [None], {0: f"training loss became {train_loss} in epoch {epoch}"})
                return
            row = {
                "epoch": epoch,
                "lr": lr_at_start,
                "train_loss": train_loss,
                "train_acc": int(correct) / count,
            }
            row.update(self.evaluate())
            row["epoch_seconds"] = time.perf_counter() - started
            yield EpochDone(epoch, [row])


CPU_INFERENCE_BATCH = 256
"""Chunk size for CPU inference: small enough for a conv net's activations to stay in cache."""


def inference_module(model: nn.Module, example: torch.Tensor, device: torch.device) -> nn.Module:
    """A faster stand-in for `model` in eval mode, or `model` itself.

    On CPU: a frozen TorchScript copy with BatchNorm folded into convolutions and oneDNN layouts,
    several times faster for conv nets. It is used only if it reproduces the eager outputs on
    `example`; any failure to build it falls back to eager.
    """
    model.eval()
    if device.type != "cpu":
        return model
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
            if torch.allclose(frozen(example), model(example), rtol=1e-4, atol=1e-4):
                return frozen
    except Exception:  # TorchScript raises many kinds of errors for modules it cannot handle
        pass
    return model


def predict_logits(
    model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """Eval-mode logits of `model` on `inputs`, in chunks: the teacher's one pass, computed in float32.

    No autocast and no TF32, even where training uses them: these logits become the soft targets,
    the subject of a temperature study, and bf16 output spacing (0.03-0.06 at magnitudes 8-16) would
    move softmax(t/T) at T = 1 by up to ~3%. One pass, cached, so full precision costs little.
    """
    if device.type == "cpu":
        batch_size = min(batch_size, CPU_INFERENCE_BATCH)
    runner = inference_module(model, inputs[:batch_size].to(device), device)
    outputs = []
    with torch.no_grad(), full_float32():
        for chunk in chunks(len(inputs), batch_size):
            outputs.append(runner(to_memory_format(inputs[chunk].to(device), channels_last)).float())
    return torch.cat(outputs)
