"""K students trained in lockstep as one stacked model.

The students share one architecture and are stacked with `torch.func` (parameters of shape (K, ...),
one `vmap`ped forward), each with its own alpha, temperature schedule, seed and optimizer state.
Conv and ResNet students on CPU are the exception: vmap would merge their convolutions into grouped
ones that round differently with K, so their forward runs member by member on slices of the stacked
parameters (`each_member`), the ops each runs alone (on 2 CPU cores no slower: 0.90x and 0.99x the
vmapped epoch for 4 `cnn` and 4 `resnet8` students). On CUDA they stay vmapped.
One batch and one teacher pass (or one read of cached teacher logits) serve them all; students of
several seeds take a batch row per seed, and the teacher one pass per row (on CUDA one on the rows
concatenated). Their losses
are summed before `backward`, which keeps their gradients independent; a member whose loss turns
non-finite is masked out and reported as failed. A member trained here on CPU gives the numbers it
would give trained alone, bitwise: tests/test_engine.py holds the proof.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from kdtemp.data import Dataset
from kdtemp.engine import (
    EpochBatches, EpochDone, LoopSettings, Member, StepsDone, StopRequested, TeacherSignal, add_sums, autocast,
    chunks, evaluation_sums, finish_evaluation, dropout_seed, steps_per_epoch,
    to_memory_format, PROGRESS_EVERY,
)
from kdtemp.hints import HintCaptures, build_regressor, feature_shape
from kdtemp.losses import combine_terms, hint_loss, kd_terms, soft_target_log_probs, standardized_logit_std
from kdtemp.models import has_dropout, vmap_rounds_by_group
from kdtemp.optim import build_optimizer, learning_rate, set_learning_rate
from kdtemp.randomness import DropoutStream, seeded
from kdtemp.schedules import initial_theta, learned_temperature, reversal_weight, scale_gradient
from kdtemp.stacking import each_member, stack_modules

EPOCH_SUMS = ("loss", "ce", "kd", "penalty", "feature", "temperature", "effective")


@dataclass(frozen=True)
class Hint:
    """FitNets hint settings of a group: weight * MSE(regressor(student feature), teacher feature)."""

    weight: float
    student_layer: str | None
    teacher_shape: tuple[int, ...]


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


# --- the group ---------------------------------------------------------------------------------


class StudentGroup:
    """K students trained in lockstep as one stacked model.

    With hints, train it inside `with StudentGroup(...) as group:`: the block owns the feature hooks
    on the (shared) teacher networks and removes them when the group ends.
    """

    def __init__(self, build_student: Callable[[], nn.Module], members: Sequence[Member], data: Dataset,
                 teacher: TeacherSignal, settings: LoopSettings, hint: Hint | None = None, stackable: bool = True):
        self.members = list(members)
        self.data, self.teacher, self.settings, self.hint = data, teacher, settings, hint
        device = settings.device
        student_shape = None
        if hint is not None:
            student_shape = feature_shape(build_student(), hint.student_layer, data.train_x[:2].cpu(), "student")
        modules, regressors = [], []
        for member in self.members:
            with seeded(member.seed):  # the init each member would get alone; the caller's RNG left as it was
                modules.append(build_student())
                if hint is not None:
                    regressors.append(build_regressor(student_shape, hint.teacher_shape))
        self.seeds = sorted({member.seed for member in self.members})
        self.member_rows = None
        """With several seeds, member k's row (its seed's) in the (S, B) batches, on the device."""
        self.seed_rows = [self.seeds.index(m.seed) for m in self.members]
        if len(self.seeds) > 1:
            if has_dropout(modules[0]):
                raise ValueError("students of several seeds train together only without dropout: "
                                 "each seed draws its own dropout masks")
            self.member_rows = torch.tensor(self.seed_rows, device=device)
        self.template, self.params, self.buffers = stack_modules(modules, device)
        self.regressor_params: dict[str, torch.Tensor] = {}
        self.captures = None
        if hint is not None:
            self.regressor_template, self.regressor_params, _ = stack_modules(regressors, device)
            self.captures = HintCaptures(self.template, hint.student_layer, teacher.networks, teacher.feature_layer)
        count = len(self.members)
        self.steps_per_epoch = steps_per_epoch(len(data.train_y), settings.batch_size)
        self.alpha = torch.tensor([m.alpha for m in self.members], device=device)
        self.standardize = torch.tensor([m.standardize for m in self.members], device=device)
        self.any_standardize = any(m.standardize for m in self.members)
        self.temperature_table = torch.stack([m.temperatures for m in self.members]).to(device)
        self.learnable = LearnableTemperatures.for_members(self.members, settings.epochs, device)
        self.theta = self.learnable.theta
        groups = [{"params": [*self.params.values(), *self.regressor_params.values()]}]
        if self.learnable.enabled:
            groups.append({"params": [self.theta], "weight_decay": 0.0})
        self.optimizer = build_optimizer(settings.training, groups, memberwise=True)
        self.inactive = torch.zeros(count, dtype=torch.bool, device=device)
        """Members that failed: their losses are masked out of the sum that is back-propagated."""
        self.failed: dict[int, str] = {}
        self.completed_epochs = 0
        self.teacher_test_log_probs = teacher.test_log_probs().to(device)
        # Without logit-std members the flag stays a Python False, so no member pays for z-scoring.
        self._standardize_arg = self.standardize if self.any_standardize else False
        # randomness="same": members draw one dropout mask, the one each would draw alone (they share a seed)
        # students vmap cannot run (stacking.vmap_failure) train member by member, with the same results
        self.member_by_member = not stackable or (device.type == "cpu" and vmap_rounds_by_group(modules[0]))
        stack = each_member if self.member_by_member else partial(vmap, randomness="same")
        self._forward_shared = stack(self._member_forward, in_dims=(0, 0, None))
        self._forward_own_batches = stack(self._member_forward, in_dims=(0, 0, 0))
        if hint is not None:
            self._regress = stack(lambda p, f: functional_call(self.regressor_template, p, (f,)), in_dims=(0, 0))
        # the no-KD baseline takes no hint either
        self.hint_weight = torch.tensor([hint.weight if hint is not None and m.distills else 0.0 for m in self.members],
                                        device=device)
        self._rows = torch.arange(count, device=device)[:, None]

    def __enter__(self) -> "StudentGroup":
        if self.captures is not None:
            self.captures.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.captures is not None:
            self.captures.__exit__(*exc_info)

    # -- per-member forward, vmapped --

    def _member_forward(self, params, buffers, inputs):
        """One member's logits, and its hint feature when hints are on."""
        if self.hint is None:
            return functional_call(self.template, (params, buffers), (inputs,))
        capture = self.captures.student
        capture.values.clear()
        logits = functional_call(self.template, (params, buffers), (inputs,))
        return logits, capture.pop()

    def _forward(self, inputs, own_batches: bool):
        forward = self._forward_own_batches if own_batches else self._forward_shared
        with autocast(self.settings.device, self.settings.amp):
            output = forward(self.params, self.buffers, inputs)
        return output if self.hint is not None else (output, None)

    def _loss_terms(self, inputs, targets, teacher_logits, teacher_features, temperature) -> tuple[dict, torch.Tensor]:
        """Every member's forward pass (one vmapped call), then the named loss terms on (K, B, ...) at once."""
        logits, features = self._forward(inputs, self.member_rows is not None)
        logits = logits.float()
        target_log_probs = soft_target_log_probs(
            teacher_logits.float(), temperature, ensemble=self.teacher.ensemble,
            weights=self.teacher.weights, standardize=self._standardize_arg,
        )
        terms = kd_terms(logits, target_log_probs, targets, temperature, self._standardize_arg)
        if self.hint is not None:
            projected = self._regress(self.regressor_params, features.float())
            teacher_axis = teacher_features.dim() - len(self.hint.teacher_shape) - 2
            target = teacher_features.float().mean(dim=teacher_axis)  # several teachers: their mean feature
            terms["feature"] = hint_loss(projected, target, member_dims=1)
        return terms, (logits.argmax(-1) == targets).sum(-1)

    # -- state for checkpoints --

    def member_state(self, k: int) -> dict:
        """Member k as a plain module state dict plus its optimizer slices: loadable into nn.Module."""

        def optimizer_slice(tensor: torch.Tensor) -> dict:
            state = self.optimizer.state.get(tensor, {})
            return {key: (value[k] if value.dim() > 0 else value).detach().clone() for key, value in state.items()}

        trainable = {**self.params, **{f"regressor.{n}": p for n, p in self.regressor_params.items()}}
        return {
            "epoch": self.completed_epochs,
            "model": {name: t[k].detach().clone() for name, t in {**self.params, **self.buffers}.items()},
            "regressor": {name: t[k].detach().clone() for name, t in self.regressor_params.items()},
            "optimizer": {name: optimizer_slice(p) for name, p in trainable.items()},
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
            for name, tensor in self.regressor_params.items():
                tensor.copy_(torch.stack([s["regressor"][name] for s in states]).to(device))
            self.theta.copy_(torch.stack([s["theta"] for s in states]).to(device))
        trainable = {**self.params, **{f"regressor.{n}": p for n, p in self.regressor_params.items()}}
        for name, tensor in trainable.items():
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
        grads = [p.grad for p in (*self.params.values(), *self.regressor_params.values()) if p.grad is not None]
        squared = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        scale = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    def _gather(self, cached: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """This step's rows of a cached (n, N, ...) or per-member (K, n, N, ...) tensor: (n, B, ...) or (K, n, B, ...).

        With several seeds `indices` are (S, B), a row per seed, and every member gets its seed's row.
        """
        if indices.dim() == 1:
            return cached[:, :, indices] if self.teacher.per_member else cached[:, indices]
        if self.teacher.per_member:  # (S, B) seed rows -> (K, B) member rows
            return cached[self._rows, :, indices[self.member_rows]].movedim(2, 1)  # (K, B, n, ...) -> (K, n, B, ...)
        return cached[:, indices].movedim(1, 0)[self.member_rows]  # (n, S, B, ...) -> (K, n, B, ...)

    def _teacher_batch(self, indices: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits (and hint features) for this step's batch: (n, B, ...), or (K, n, B, ...) per member.

        With several seeds the batch has a row per seed, (S, B, ...). Teachers run on every batch
        (augmented inputs): on CUDA on the S rows concatenated, (S*B, ...), one call per teacher and
        step, whose rows each member indexes by its seed; on CPU once per seed row, because a sample's
        logits can round differently inside a batch of another size (1e-7 for batches of 3, 5 or 17
        rows, measured), and a member must get exactly the targets it gets alone (tests/test_engine.py).
        """
        if self.teacher.train_logits is not None:
            features = self._gather(self.teacher.train_features, indices) if self.hint is not None else None
            return self._gather(self.teacher.train_logits, indices), features
        layout = partial(to_memory_format, channels_last=self.teacher.channels_last)
        if self.teacher.per_member:  # network k is member k's own teacher, on its batch: (K, B, ...) -> (K, 1, B, ...)
            if self.member_rows is None:
                batches = [layout(inputs)] * len(self.members)
            else:
                batches = [layout(inputs[row]) for row in self.seed_rows]
            logits, features = self._run_teachers(batches)
            return logits.unsqueeze(1), None if features is None else features.unsqueeze(1)
        if self.member_rows is None:
            return self._run_teachers([layout(inputs)] * len(self.teacher.networks))
        if self.settings.device.type == "cpu":
            rows = [self._run_teachers([layout(row)] * len(self.teacher.networks)) for row in inputs]
            logits = torch.cat([row_logits for row_logits, _ in rows], dim=1)
            features = None if rows[0][1] is None else torch.cat([row_features for _, row_features in rows], dim=1)
        else:
            logits, features = self._run_teachers([layout(inputs.flatten(0, 1))] * len(self.teacher.networks))
        return self._by_member(logits), None if features is None else self._by_member(features)

    def _run_teachers(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each teacher network on its batch, in float32 even when the students use bf16 autocast: (n, B, C)
        logits, (n, B, *F) features. The logits are the soft targets, the subject of a temperature study:
        bf16 features would move softmax(t/T) at T = 1 by up to 1.6e-1 relative (measured for a `cnn`
        teacher with CUDA's cast policy; a float32 classifier alone only brought that to 9.6e-2). On CUDA
        its matmuls and convolutions may use TF32 (device.configure_backends); one pass serves the group."""
        networks = self.teacher.networks
        with torch.no_grad(), autocast(self.settings.device, False):
            logits = torch.stack([network(batch).float() for network, batch in zip(networks, batches, strict=True)])
        features = None
        if self.hint is not None:
            features = torch.stack([capture.pop().float() for capture in self.captures.teachers])
        return logits, features

    def _by_member(self, concatenated: torch.Tensor) -> torch.Tensor:
        """(n, S*B, ...) outputs on the seed rows concatenated -> (K, n, B, ...), member k's seed's rows."""
        seeds = len(self.seeds)
        return concatenated.unflatten(1, (seeds, -1)).movedim(1, 0)[self.member_rows]

    def evaluate(self) -> dict[str, torch.Tensor]:
        """Test metrics per member, as (K,) tensors on the device."""
        self.template.eval()
        totals: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for chunk in chunks(len(self.data.test_y), self.settings.eval_batch_size):
                logits = self._forward(self.data.test_x[chunk], own_batches=False)[0].float()
                teacher = self.teacher_test_log_probs[..., chunk, :]
                add_sums(totals, evaluation_sums(logits, self.data.test_y[chunk], teacher))
        self.template.train()
        return finish_evaluation(totals, len(self.data.test_y))

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StepsDone | EpochDone]:
        settings, device = self.settings, self.settings.device
        count = len(self.members)
        self.template.train()
        for epoch in range(self.completed_epochs, settings.epochs):
            started = time.perf_counter()
            dropout = DropoutStream(dropout_seed(self.seeds[0], epoch), device)
            # batch-weighted sums of EPOCH_SUMS and correct counts, kept on the device
            weighted = torch.zeros(len(EPOCH_SUMS), count, device=device)
            correct_total = torch.zeros(count, dtype=torch.long, device=device)
            lr_at_start = learning_rate(settings.training, epoch * self.steps_per_epoch, self.steps_per_epoch)
            batches = EpochBatches(self.data, settings, epoch, self.seeds)
            for step, (indices, inputs, targets) in enumerate(batches):
                step_index = epoch * self.steps_per_epoch + step
                set_learning_rate(self.optimizer, learning_rate(settings.training, step_index, self.steps_per_epoch))
                teacher_logits, teacher_features = self._teacher_batch(indices, inputs)
                if self.member_rows is not None:  # a row per seed -> a row per member
                    inputs, targets = inputs[self.member_rows], targets[self.member_rows]
                temperature, penalty = self.learnable.temperatures(self.temperature_table[:, step_index], epoch)
                with dropout.drawing():  # the forward pass draws the masks; backward reuses them
                    terms, correct = self._loss_terms(inputs, targets, teacher_logits, teacher_features, temperature)
                feature = terms.pop("feature", torch.zeros_like(penalty))
                losses = combine_terms({**terms, "penalty": penalty, "feature": self.hint_weight * feature}, self.alpha)
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
                        # t0 * mean std of the logits logit-std z-scores: scalar, or (K,) with per-member teachers
                        effective = temperature * standardized_logit_std(
                            teacher_logits.float(), ensemble=self.teacher.ensemble, weights=self.teacher.weights,
                        ).mean(dim=-1)
                    stacked = (losses, terms["ce"], terms["kd"], penalty, feature, temperature, effective)
                    weighted += torch.stack(stacked) * batch
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
            if self.hint is not None and member.distills:
                row["train_feature"] = host["feature"][k] / count
            rows.append(row)
        if new_failures:
            self.inactive[list(new_failures)] = True
        return EpochDone(epoch, rows, new_failures)
