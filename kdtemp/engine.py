"""Training loops: a plain one for a single network (teachers), a stacked one for student groups.

The engine knows nothing of files or the CLI. Each loop is a generator of events; the caller writes
metrics and checkpoints when an epoch ends, and asks for per-member state to do so.

A student group is K students of one architecture stacked with `torch.func` (parameters of shape
(K, ...), one `vmap`ped forward), each with its own alpha, temperature schedule, init seed and
optimizer state. Members share the batch stream, so one batch and one teacher pass (or one read of
cached teacher logits) serve them all. Their losses are summed before `backward`, which keeps their
gradients independent; a member whose loss turns non-finite is masked out and reported as failed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdtemp import metrics as M
from kdtemp.config import LearnableSchedule, TrainingSettings
from kdtemp.data import Dataset, augment_batch, draw_augmentation
from kdtemp.losses import combine_terms, kd_terms, soft_target_log_probs
from kdtemp.models import has_dropout
from kdtemp.optim import build_optimizer, learning_rate, set_learning_rate
from kdtemp.schedules import initial_theta, learned_temperature, reversal_weight, scale_gradient

PROGRESS_EVERY = 20  # steps between progress events
EPOCH_SUMS = ("loss", "ce", "kd", "penalty", "temperature", "effective")
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
    """The single network's seed (batch order, augmentation, dropout); a student group uses its members' seeds."""
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


@dataclass(frozen=True)
class TeacherSignal:
    """What the teacher contributes: cached logits, or networks to run on each batch.

    Logits have a teacher axis: (n_teachers, N, C), or (K, n_teachers, N, C) when every member has
    its own teacher (born-again generations).
    """

    test_logits: torch.Tensor
    train_logits: torch.Tensor | None = None
    networks: tuple[nn.Module, ...] = ()
    per_member: bool = False
    ensemble: str = "mean_probs"
    weights: torch.Tensor | None = None

    def test_log_probs(self) -> torch.Tensor:
        """The teacher's (or ensemble's) predictive log-probabilities at T = 1 on the test set."""
        if self.per_member:
            return torch.stack([
                soft_target_log_probs(logits, 1.0, ensemble=self.ensemble, weights=self.weights)
                for logits in self.test_logits
            ])
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
    """The batch order of one epoch, a function of (seed, epoch) alone: a resumed run sees the same batches."""
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


def _seed_dropout(seed: int, epoch: int) -> None:
    drawn = int(torch.randint(0, 2**62, (1,), generator=epoch_generator(seed, epoch, DROPOUT_STREAM)))
    torch.manual_seed(drawn)


class _EpochBatches:
    """Index batches of one epoch, plus its augmentation draws, all on the device.

    With one seed each batch is (B,) indices shared by every member. With several seeds
    (`member_rows[k]` = member k's seed's row), batches are (K, B): row k is what member k would
    draw alone. Augmentation needs one seed.
    """

    def __init__(self, data: Dataset, settings: LoopSettings, epoch: int, seeds: Sequence[int] | None = None,
                 member_rows: torch.Tensor | None = None):
        num_samples = len(data.train_y)
        seeds = list(seeds) if seeds is not None else [settings.seed]
        orders = torch.stack([epoch_order(seed, epoch, num_samples) for seed in seeds]).to(settings.device)
        self.orders = orders[0] if member_rows is None else orders
        self.member_rows = member_rows
        self.batch_size = settings.batch_size
        self.data = data
        self.augmentation = None
        if settings.augment:
            if member_rows is not None:
                raise ValueError("augmented batches need one seed per group")
            generator = epoch_generator(seeds[0], epoch, AUGMENT_STREAM)
            self.augmentation = draw_augmentation(num_samples, generator, settings.device)
        self.channels_last = settings.channels_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.data.train_y), self.batch_size):
            if self.member_rows is None:
                indices = self.orders[start:start + self.batch_size]
            else:
                indices = self.orders[self.member_rows, start:start + self.batch_size]
            inputs = self.data.train_x[indices]
            if self.augmentation is not None:
                inputs = augment_batch(inputs, indices, self.augmentation, self.data.pad_value)
            if self.channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield indices, inputs, self.data.train_y[indices]


def _chunks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def _evaluation_sums(logits: torch.Tensor, targets: torch.Tensor, teacher_log_probs: torch.Tensor | None) -> dict[str, torch.Tensor]:
    sums = {
        "test_loss": M.cross_entropy_sum(logits, targets),
        "test_acc": M.correct_count(logits, targets).to(logits.dtype),
        "calibration": M.calibration_bins(logits, targets),
    }
    if teacher_log_probs is not None:
        sums["agreement"] = M.agreement_count(logits, teacher_log_probs).to(logits.dtype)
        sums["test_kl"] = M.teacher_kl_sum(logits, teacher_log_probs)
    return sums


def _finish_evaluation(totals: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    result = {name: value / count for name, value in totals.items() if name != "calibration"}
    result["test_ece"] = M.expected_calibration_error(totals["calibration"])
    return result


def _add(totals: dict[str, torch.Tensor], sums: dict[str, torch.Tensor]) -> None:
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
        return {"epoch": self.completed_epochs, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.completed_epochs = int(state["epoch"])

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        with torch.no_grad(), autocast(self.settings.device, self.settings.amp):
            for chunk in _chunks(len(self.data.test_y), self.settings.eval_batch_size):
                logits = self.model(self._prepare(self.data.test_x[chunk])).float()
                _add(totals, _evaluation_sums(logits, self.data.test_y[chunk], None))
        self.model.train()
        return {name: float(value) for name, value in _finish_evaluation(totals, len(self.data.test_y)).items()}

    def _prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StepsDone | EpochDone]:
        settings, device = self.settings, self.settings.device
        self.model.train()
        for epoch in range(self.completed_epochs, settings.epochs):
            started = time.perf_counter()
            _seed_dropout(settings.seed, epoch)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            lr_at_start = learning_rate(settings.training, epoch * self.steps_per_epoch, self.steps_per_epoch)
            for step, (_, inputs, targets) in enumerate(_EpochBatches(self.data, settings, epoch)):
                set_learning_rate(self.optimizer, learning_rate(settings.training, epoch * self.steps_per_epoch + step, self.steps_per_epoch))
                with autocast(device, settings.amp):
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
            row = {"epoch": epoch, "lr": lr_at_start, "train_loss": train_loss, "train_acc": float(correct) / count}
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


def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device,
                   amp: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Eval-mode logits of `model` on `inputs`, in float32, in chunks: the teacher's one pass."""
    if device.type == "cpu":
        batch_size = min(batch_size, CPU_INFERENCE_BATCH)
    runner = inference_module(model, inputs[:batch_size].to(device), device)
    outputs = []
    with torch.no_grad(), autocast(device, amp):
        for chunk in _chunks(len(inputs), batch_size):
            batch = inputs[chunk].to(device)
            if channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(runner(batch).float())
    return torch.cat(outputs)


# --- learnable temperatures (CTKD) -----------------------------------------------------------


@dataclass
class LearnableTemperatures:
    """Per-member CTKD temperature parameters; members without one keep their scheduled T."""

    mask: torch.Tensor
    theta: torch.Tensor
    t_min: torch.Tensor
    t_range: torch.Tensor
    t_max: torch.Tensor
    penalty: torch.Tensor
    t_target: torch.Tensor
    reversal: torch.Tensor
    """Gradient-reversal weight per member and epoch, shape (K, epochs)."""

    enabled: bool
    """Whether any member learns its temperature (a Python bool: checking the mask would sync the device)."""

    @classmethod
    def for_members(cls, members: Sequence[Member], epochs: int, device: torch.device) -> "LearnableTemperatures":
        def column(get, default: float) -> torch.Tensor:
            values = [get(m.learnable) if m.learnable is not None else default for m in members]
            return torch.tensor(values, dtype=torch.float32, device=device)

        theta = torch.tensor([initial_theta(m.learnable, m.t0) if m.learnable is not None else 0.0 for m in members],
                             dtype=torch.float32, device=device)
        reversal = [[reversal_weight(m.learnable, e) if m.learnable is not None else 0.0 for e in range(epochs)]
                    for m in members]
        return cls(
            enabled=any(m.learnable is not None for m in members),
            mask=torch.tensor([m.learnable is not None for m in members], device=device),
            theta=theta.requires_grad_(),
            t_min=column(lambda s: s.t_min, 1.0),
            t_range=column(lambda s: s.t_range, 1.0),
            t_max=column(lambda s: s.t_max if s.t_max is not None else math.inf, math.inf),
            penalty=column(lambda s: s.penalty, 0.0),
            t_target=column(lambda s: s.t_target or 1.0, 1.0),
            reversal=torch.tensor(reversal, dtype=torch.float32, device=device),
        )

    def temperatures(self, scheduled: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(temperature for the KD term, penalty term) per member at this step.

        The KD term sees theta through a gradient-reversal layer, so theta climbs the KD loss
        (CTKD's adversarial temperature); the optional penalty pulls T towards t_target normally.
        """
        if not self.enabled:
            return scheduled, torch.zeros_like(scheduled)
        reversed_theta = scale_gradient(self.theta, self.reversal[:, epoch])
        learned = torch.minimum(learned_temperature(reversed_theta, self.t_min, self.t_range), self.t_max)
        plain = learned_temperature(self.theta, self.t_min, self.t_range)
        penalty = torch.where(self.mask, self.penalty * (plain - self.t_target) ** 2, torch.zeros_like(plain))
        return torch.where(self.mask, learned, scheduled), penalty


# --- a stacked group of students ---------------------------------------------------------------


class StudentGroup:
    """K students trained in lockstep as one stacked model."""

    def __init__(self, build_student: Callable[[], nn.Module], members: Sequence[Member], data: Dataset,
                 teacher: TeacherSignal, settings: LoopSettings):
        self.members = list(members)
        self.data, self.teacher, self.settings = data, teacher, settings
        device = settings.device
        modules = []
        for member in self.members:
            torch.manual_seed(member.seed)
            modules.append(build_student())
        self.seeds = sorted({member.seed for member in self.members})
        self.member_rows = None
        if len(self.seeds) > 1:
            if teacher.train_logits is None or settings.augment or has_dropout(modules[0]):
                raise ValueError("students of several seeds train together only with cached teacher logits, "
                                 "no augmentation and no dropout")
            self.member_rows = torch.tensor([self.seeds.index(m.seed) for m in self.members], device=device)
        # The template holds structure only; stacked tensors are the real parameters.
        self.template = copy.deepcopy(modules[0]).to("meta")
        params, buffers = stack_module_state(modules)
        self.params = {name: p.detach().to(device).requires_grad_() for name, p in params.items()}
        self.buffers = {name: b.to(device) for name, b in buffers.items()}
        count = len(self.members)
        self.steps_per_epoch = steps_per_epoch(len(data.train_y), settings.batch_size)
        self.alpha = torch.tensor([m.alpha for m in self.members], device=device)
        self.standardize = torch.tensor([m.standardize for m in self.members], device=device)
        self.any_standardize = any(m.standardize for m in self.members)
        self.temperature_table = torch.stack([m.temperatures for m in self.members]).to(device)
        self.learnable = LearnableTemperatures.for_members(self.members, settings.epochs, device)
        self.theta = self.learnable.theta
        groups = [{"params": list(self.params.values())}]
        if self.learnable.enabled:
            groups.append({"params": [self.theta], "weight_decay": 0.0})
        self.optimizer = build_optimizer(settings.training, groups)
        self.inactive = torch.zeros(count, dtype=torch.bool, device=device)
        """Members that failed: their losses are masked out of the sum that is back-propagated."""
        self.failed: dict[int, str] = {}
        self.completed_epochs = 0
        self.teacher_test_log_probs = teacher.test_log_probs().to(device)
        # Without logit-std members the flag stays a Python False, so no member pays for z-scoring.
        self._standardize_arg = self.standardize if self.any_standardize else False
        # randomness="same": members draw one dropout mask, the one each would draw alone (they share a seed)
        self._forward_logits = vmap(self._member_logits, in_dims=(0, 0, None), randomness="same")
        self._forward_own_batches = vmap(self._member_logits, in_dims=(0, 0, 0), randomness="same")
        self._rows = torch.arange(count, device=device)[:, None]

    # -- per-member pieces, vmapped --

    def _member_logits(self, params, buffers, inputs):
        return functional_call(self.template, (params, buffers), (inputs,))

    def _loss_terms(self, inputs, targets, teacher_logits, temperature):
        """Every member's forward pass (one vmapped call), then the KD terms on (K, B, C) logits at once."""
        forward = self._forward_logits if self.member_rows is None else self._forward_own_batches
        with autocast(self.settings.device, self.settings.amp):
            logits = forward(self.params, self.buffers, inputs)
        logits = logits.float()
        target_log_probs = soft_target_log_probs(
            teacher_logits.float(), temperature, ensemble=self.teacher.ensemble,
            weights=self.teacher.weights, standardize=self._standardize_arg,
        )
        terms = kd_terms(logits, target_log_probs, targets, temperature, self._standardize_arg)
        return terms["ce"], terms["kd"], (logits.argmax(-1) == targets).sum(-1)

    # -- state for checkpoints --

    def member_state(self, k: int) -> dict:
        """Member k as a plain module state dict plus its optimizer slices: loadable into nn.Module."""

        def optimizer_slice(tensor: torch.Tensor) -> dict:
            state = self.optimizer.state.get(tensor, {})
            return {key: (value[k] if value.dim() > 0 else value).detach().clone() for key, value in state.items()}

        return {
            "epoch": self.completed_epochs,
            "model": {name: t[k].detach().clone() for name, t in {**self.params, **self.buffers}.items()},
            "optimizer": {name: optimizer_slice(p) for name, p in self.params.items()},
            "theta": self.theta[k].detach().clone(),
            "theta_optimizer": optimizer_slice(self.theta),
        }

    def load_member_states(self, states: Sequence[dict]) -> None:
        """Restore every member from `member_state` dicts (all at the same epoch)."""
        epochs = {int(s["epoch"]) for s in states}
        if len(epochs) != 1:
            raise ValueError(f"members of one group must resume from one epoch, got {sorted(epochs)}")
        device = self.settings.device
        with torch.no_grad():
            for name, tensor in {**self.params, **self.buffers}.items():
                tensor.copy_(torch.stack([s["model"][name] for s in states]).to(device))
            self.theta.copy_(torch.stack([s["theta"] for s in states]).to(device))
        for name, tensor in self.params.items():
            self._restore_optimizer_state(tensor, [s["optimizer"].get(name, {}) for s in states])
        self._restore_optimizer_state(self.theta, [s.get("theta_optimizer", {}) for s in states])
        self.completed_epochs = epochs.pop()

    def _restore_optimizer_state(self, tensor: torch.Tensor, slices: list[dict]) -> None:
        if not slices or not slices[0]:
            return
        restored = {}
        for key, first in slices[0].items():
            if first.dim() == 0 and key == "step":
                restored[key] = first.clone()
            else:
                restored[key] = torch.stack([s[key] for s in slices]).to(tensor.device)
        self.optimizer.state[tensor] = restored

    # -- training --

    def _clip_gradients(self, max_norm: float) -> None:
        """Per-member gradient-norm clipping, equal to clip_grad_norm_ on each student alone."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        squared = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        scale = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    def _teacher_logits(self, indices: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """(n_teachers, B, C) shared by the group, or (K, n_teachers, B, C) per member."""
        cached = self.teacher.train_logits
        if cached is not None:
            if indices.dim() == 1:
                return cached[:, :, indices] if self.teacher.per_member else cached[:, indices]
            if self.teacher.per_member:  # (K, n, N, C) -> (K, B, n, C) -> (K, n, B, C)
                return cached[self._rows, :, indices].permute(0, 2, 1, 3)
            return cached[:, indices].movedim(1, 0)  # (n, K, B, C) -> (K, n, B, C)
        with torch.no_grad(), autocast(self.settings.device, self.settings.amp):
            return torch.stack([network(inputs).float() for network in self.teacher.networks])

    def evaluate(self) -> dict[str, torch.Tensor]:
        """Test metrics per member, as (K,) tensors on the device."""
        self.template.eval()
        totals: dict[str, torch.Tensor] = {}
        with torch.no_grad(), autocast(self.settings.device, self.settings.amp):
            for chunk in _chunks(len(self.data.test_y), self.settings.eval_batch_size):
                logits = self._forward_logits(self.params, self.buffers, self.data.test_x[chunk]).float()
                teacher = self.teacher_test_log_probs[..., chunk, :]
                _add(totals, _evaluation_sums(logits, self.data.test_y[chunk], teacher))
        self.template.train()
        return _finish_evaluation(totals, len(self.data.test_y))

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StepsDone | EpochDone]:
        settings, device = self.settings, self.settings.device
        count = len(self.members)
        self.template.train()
        for epoch in range(self.completed_epochs, settings.epochs):
            started = time.perf_counter()
            _seed_dropout(self.seeds[0], epoch)
            # batch-weighted sums of (loss, ce, kd, penalty, temperature, effective T) and correct counts, on the device
            weighted = torch.zeros(len(EPOCH_SUMS), count, device=device)
            correct_total = torch.zeros(count, device=device)
            lr_at_start = learning_rate(settings.training, epoch * self.steps_per_epoch, self.steps_per_epoch)
            batches = _EpochBatches(self.data, settings, epoch, self.seeds, self.member_rows)
            for step, (indices, inputs, targets) in enumerate(batches):
                step_index = epoch * self.steps_per_epoch + step
                set_learning_rate(self.optimizer, learning_rate(settings.training, step_index, self.steps_per_epoch))
                teacher_logits = self._teacher_logits(indices, inputs)
                temperature, penalty = self.learnable.temperatures(self.temperature_table[:, step_index], epoch)
                ce, kd, correct = self._loss_terms(inputs, targets, teacher_logits, temperature)
                losses = combine_terms({"ce": ce, "kd": kd, "penalty": penalty}, self.alpha)
                total = losses.masked_fill(self.inactive, 0.0).sum()
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if settings.clip_grad_norm:
                    self._clip_gradients(settings.clip_grad_norm)
                self.optimizer.step()
                batch = targets.shape[-1]
                with torch.no_grad():
                    effective = temperature
                    if self.any_standardize:
                        # mean per-sample std of the teacher logits: scalar, or (K,) with per-member teachers
                        effective = temperature * teacher_logits.float().std(dim=-1).flatten(-2).mean(dim=-1)
                    weighted += torch.stack((losses, ce, kd, penalty, temperature, effective)) * batch
                    correct_total += correct
                if should_stop is not None and should_stop():
                    raise StopRequested
                if (step + 1) % PROGRESS_EVERY == 0:
                    yield StepsDone(epoch, step + 1, self.steps_per_epoch)
            sums = dict(zip(EPOCH_SUMS, weighted.unbind()))
            sums["correct"] = correct_total
            yield self._end_epoch(epoch, sums, lr_at_start, started)
            if bool(self.inactive.all()):
                return

    def _end_epoch(self, epoch: int, sums: dict[str, torch.Tensor], lr: float, started: float) -> EpochDone:
        count = len(self.data.train_y)
        finite = torch.isfinite(sums["loss"])
        evaluation = self.evaluate()
        host = {name: value.cpu().tolist() for name, value in {**sums, **evaluation, "finite": finite}.items()}
        self.completed_epochs = epoch + 1
        seconds = time.perf_counter() - started
        rows: list[dict | None] = []
        new_failures: dict[int, str] = {}
        for k, member in enumerate(self.members):
            if k in self.failed:
                rows.append(None)
                continue
            if not host["finite"][k]:
                reason = f"training loss became {host['loss'][k]} in epoch {epoch}"
                self.failed[k] = reason
                new_failures[k] = reason
                rows.append(None)
                continue
            row = {
                "epoch": epoch,
                "temperature": host["temperature"][k] / count,
                "lr": lr,
                "train_loss": host["loss"][k] / count,
                "train_ce": host["ce"][k] / count,
                "train_kd": host["kd"][k] / count if member.distills else None,
                "train_acc": host["correct"][k] / count,
                "test_loss": host["test_loss"][k],
                "test_acc": host["test_acc"][k],
                "agreement": host["agreement"][k],
                "test_kl": host["test_kl"][k],
                "test_ece": host["test_ece"][k],
                "epoch_seconds": seconds,
            }
            if member.standardize:
                row["effective_temperature"] = host["effective"][k] / count
            if member.learnable is not None and member.learnable.penalty > 0:
                row["train_penalty"] = host["penalty"][k] / count
            rows.append(row)
        if new_failures:
            self.inactive[list(new_failures)] = True
        return EpochDone(epoch, rows, new_failures)
