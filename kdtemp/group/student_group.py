"""K students trained in lockstep as one stacked model.

The students share one architecture and are stacked with `torch.func` (parameters of shape (K, ...),
one `vmap`ped forward), each with its own alpha, temperature schedule, seed and optimizer state.
Conv and ResNet students on CPU are the exception: vmap would merge their convolutions into grouped
ones that round differently with K, so their forward runs member by member on slices of the stacked
parameters (`each_member`), the ops each runs alone (no slower in a one-off measurement on 2 CPU
cores for 4 `cnn` and 4 `resnet8` students: docs/concepts/engine.md). On CUDA they stay vmapped.
One batch and one teacher pass (or one read of cached teacher logits) serve them all; students of
several seeds take a batch row per seed, and the teacher one pass per row (on CUDA one on the rows
concatenated). Their losses
are summed before `backward`, which keeps their gradients independent; a member whose loss turns
non-finite is masked out and reported as failed. A member trained here on CPU gives the numbers it
would give trained alone, bitwise: tests/engine/test_engine.py holds the proof.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, vmap

from kdtemp.data.dataset import Dataset
from kdtemp.engine.evaluation import METRICS, SPLITS, metric_name, split_metrics
from kdtemp.engine.loop import (
    PROGRESS_EVERY,
    EpochBatches,
    EpochDone,
    LoopSettings,
    Member,
    StepsDone,
    StopRequested,
    TeacherSignal,
    autocast,
    dropout_seed,
    steps_per_epoch,
)
from kdtemp.engine.optim import build_optimizer, learning_rate, set_learning_rate
from kdtemp.engine.randomness import DropoutStream, caller_rng_kept, seeded
from kdtemp.engine.stacking import each_member, stack_modules
from kdtemp.errors import ConfigError
from kdtemp.group.teacher_batches import TeacherBatches
from kdtemp.losses import combine_terms
from kdtemp.methods.base import GroupSetting, KDMethod, Step, Terms
from kdtemp.methods.registry import methods_for
from kdtemp.models.features import Hint
from kdtemp.models.inspection import has_dropout, vmap_rounds_by_group

__all__ = ["StudentGroup"]

EVALUATION_FIELDS = tuple(metric_name(split, metric) for split in SPLITS for metric in METRICS)


class StudentGroup:
    """K students trained in lockstep as one stacked model, with the KD methods their members use.

    The group stacks the students, runs their forward, optimises, masks failed members and slices a
    member's state; everything particular to a KD method (its temperature, its loss terms, its CSV
    fields, its parameters and hooks) is that method's, in kdtemp/methods/. Train it inside
    `with StudentGroup(...) as group:`: the block owns the methods' hooks (hints' feature hooks on
    the shared teacher networks) and removes them when the group ends.
    """

    def __init__(
        self,
        build_student: Callable[[], nn.Module],
        members: Sequence[Member],
        data: Dataset,
        teacher: TeacherSignal,
        settings: LoopSettings,
        hint: Hint | None = None,
        stackable: bool = True,
    ):
        self.members = list(members)
        self.data, self.teacher, self.settings = data, teacher, settings
        device = settings.device
        setting = GroupSetting(build_student, data, teacher, settings, hint)
        with caller_rng_kept():  # a method may build a throwaway student to probe shapes
            self.methods: list[KDMethod] = methods_for(self.members, setting)
        self._term_names_checked = False
        modules = []
        for member in self.members:
            with seeded(member.seed):  # the init each member would get alone; the caller's RNG left as it was
                modules.append(build_student())
                for method in self.methods:
                    method.member_built(member)
        self.seeds = sorted({member.seed for member in self.members})
        self.member_rows = None
        """With several seeds, member k's row (its seed's) in the (S, B) batches, on the device."""
        self.seed_rows = [self.seeds.index(m.seed) for m in self.members]
        if len(self.seeds) > 1:
            if has_dropout(modules[0]):
                raise ValueError(
                    "students of several seeds train together only without dropout: "
                    "each seed draws its own dropout masks"
                )
            self.member_rows = torch.tensor(self.seed_rows, device=device)
        self.template, self.params, self.buffers = stack_modules(modules, device)
        # what a module's state_dict holds: non-persistent buffers (transformers' position_ids) stay out of
        # saved states, so model.pt loads into a freshly built module
        self.saved_names = set(modules[0].state_dict())
        self.steps_per_epoch = steps_per_epoch(len(data.train_y), settings.batch_size)
        self.alpha = torch.tensor([m.alpha for m in self.members], device=device)
        self.temperature_table = torch.stack([m.temperatures for m in self.members]).to(device)
        # randomness="same": members draw one dropout mask, the one each would draw alone (they share a seed)
        # students vmap cannot run (stacking.vmap_failure) train member by member, with the same results
        self.member_by_member = not stackable or (device.type == "cpu" and vmap_rounds_by_group(modules[0]))
        stack = each_member if self.member_by_member else partial(vmap, randomness="same")
        for method in self.methods:
            method.bind(self.template, stack)
        self._forward_shared = stack(self._member_forward, in_dims=(0, 0, None))
        self._forward_own_batches = stack(self._member_forward, in_dims=(0, 0, 0))
        self._features = next((m for m in self.methods if m.captures_features), None)
        """The method whose hooks capture hint features (students' and teachers'), if any."""
        # without logit-std members this stays a Python False, so no member pays for z-scoring
        masks = (method.standardizes() for method in self.methods)
        self._standardize = next((mask for mask in masks if mask is not False), False)
        self.teacher_batch = TeacherBatches(
            teacher,
            settings,
            self.seeds,
            self.seed_rows,
            self.member_rows,
            None if self._features is None else self._teacher_captures,
        )
        groups = [{"params": [*self.params.values(), *self._trained_with_students().values()]}]
        for method in self.methods:
            groups.extend(method.optimizer_groups())
        self.optimizer = build_optimizer(settings.training, groups, memberwise=True)
        self.inactive = torch.zeros(len(self.members), dtype=torch.bool, device=device)
        """Members that failed: their losses are masked out of the sum that is back-propagated."""
        self.failed: dict[int, str] = {}
        self.completed_epochs = 0
        self.teacher_log_probs = {split: teacher.log_probs(split).to(device) for split in SPLITS}
        self._hooks = contextlib.ExitStack()

    def __enter__(self) -> StudentGroup:
        for method in self.methods:
            self._hooks.enter_context(method.hooks())
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.close()

    def method(self, name: str) -> KDMethod:
        """This group's instance of the KD method registered as `name`."""
        return next(method for method in self.methods if method.name == name)

    def _trained_with_students(self) -> dict[str, torch.Tensor]:
        return {name: t for method in self.methods for name, t in method.trained_with_students().items()}

    def _teacher_captures(self):
        return self._features.teacher_captures

    # -- per-member forward, vmapped --

    def _member_forward(self, params, buffers, inputs):
        """One member's logits, and its hint feature when a method captures one."""
        if self._features is None:
            return functional_call(self.template, (params, buffers), (inputs,))
        capture = self._features.student_capture
        capture.values.clear()
        logits = functional_call(self.template, (params, buffers), (inputs,))
        return logits, capture.pop()

    def _forward(self, inputs, own_batches: bool):
        forward = self._forward_own_batches if own_batches else self._forward_shared
        with autocast(self.settings.device, self.settings.amp):
            output = forward(self.params, self.buffers, inputs)
        return output if self._features is not None else (output, None)

    def _loss_terms(
        self, epoch: int, inputs, targets, teacher_logits, teacher_features, temperature
    ) -> tuple[Terms, torch.Tensor]:
        """Every member's forward pass (one vmapped call), then each method's named terms on (K, B, ...)."""
        logits, features = self._forward(inputs, self.member_rows is not None)
        step = Step(
            epoch,
            logits.float(),
            targets,
            teacher_logits,
            temperature,
            self._standardize,
            features,
            teacher_features,
        )
        terms = Terms()
        for method in self.methods:
            found = method.terms(step)
            if not self._term_names_checked:
                _check_new_names(method, terms, found)
            terms.added.update(found.added)
            terms.logged.update(found.logged)
        self._term_names_checked = True
        return terms, (step.logits.argmax(-1) == targets).sum(-1)

    # -- state for checkpoints --

    def member_state(self, k: int) -> dict:
        """Member k as a plain module state dict plus its optimizer slices (and its methods' entries:
        "regressor" for hints, "theta" and "theta_optimizer" for CTKD): loadable into nn.Module."""

        def optimizer_slice(tensor: torch.Tensor) -> dict:
            state = self.optimizer.state.get(tensor, {})
            return {
                key: (value[k] if value.dim() > 0 else value).detach().clone() for key, value in state.items()
            }

        trainable = {**self.params, **self._trained_with_students()}
        state = {
            "epoch": self.completed_epochs,
            "model": {
                name: t[k].detach().clone()
                for name, t in {**self.params, **self.buffers}.items()
                if name in self.saved_names
            },
            "optimizer": {name: optimizer_slice(p) for name, p in trainable.items()},
        }
        for method in self.methods:
            state.update(method.member_state(k, optimizer_slice))
        return state

    def load_member_states(self, states: Sequence[dict]) -> None:
        """Restore every member from `member_state` dicts (all at the same epoch)."""
        epochs = {int(s["epoch"]) for s in states}
        if len(epochs) != 1:
            raise ValueError(f"members of one group must resume from one epoch, got {sorted(epochs)}")
        device = self.settings.device
        with torch.no_grad():
            for name, tensor in {**self.params, **self.buffers}.items():
                if name in self.saved_names:  # non-persistent buffers keep the values they were built with
                    tensor.copy_(torch.stack([s["model"][name] for s in states]).to(device))
        for method in self.methods:
            method.load_member_states(states, self._restore_optimizer_state)
        trainable = {**self.params, **self._trained_with_students()}
        for name, tensor in trainable.items():
            self._restore_optimizer_state(tensor, [s["optimizer"].get(name, {}) for s in states])
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
        trained = (*self.params.values(), *self._trained_with_students().values())
        grads = [p.grad for p in trained if p.grad is not None]
        squared = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        scale = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    def evaluate(self) -> dict[str, torch.Tensor]:
        """Validation and test metrics per member, as (K,) tensors on the device
        (`evaluation.split_metrics`)."""
        self.template.eval()
        with torch.no_grad():
            metrics = split_metrics(
                self.data,
                self.settings.eval_batch_size,
                lambda inputs: self._forward(inputs, own_batches=False)[0].float(),
                self.teacher_log_probs,
            )
        self.template.train()
        return metrics

    def _temperature(self, step_index: int, epoch: int) -> torch.Tensor:
        """(K,) temperatures of a step: the scheduled ones through each method (CTKD learns its own)."""
        temperature = self.temperature_table[:, step_index]
        for method in self.methods:
            temperature = method.temperature(temperature, epoch)
        return temperature

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StepsDone | EpochDone]:
        settings = self.settings
        self.template.train()
        for epoch in range(self.completed_epochs, settings.epochs):
            started = time.perf_counter()
            dropout = DropoutStream(dropout_seed(self.seeds[0], epoch), settings.device)
            sums = _EpochSums(len(self.members), settings.device)
            lr_at_start = learning_rate(settings.training, epoch * self.steps_per_epoch, self.steps_per_epoch)
            batches = EpochBatches(self.data, settings, epoch, self.seeds)
            for step, (indices, inputs, targets) in enumerate(batches):
                step_index = epoch * self.steps_per_epoch + step
                lr = learning_rate(settings.training, step_index, self.steps_per_epoch)
                set_learning_rate(self.optimizer, lr)
                teacher_logits, teacher_features = self.teacher_batch(indices, inputs)
                if self.member_rows is not None:  # a row per seed -> a row per member
                    inputs, targets = inputs[self.member_rows], targets[self.member_rows]
                temperature = self._temperature(step_index, epoch)
                with dropout.drawing():  # the forward pass draws the masks; backward reuses them
                    terms, correct = self._loss_terms(
                        epoch, inputs, targets, teacher_logits, teacher_features, temperature
                    )
                losses = combine_terms(terms.added, self.alpha)
                total = losses.masked_fill(self.inactive, 0.0).sum()
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if settings.clip_grad_norm:
                    self._clip_gradients(settings.clip_grad_norm)
                self.optimizer.step()
                logged = {"loss": losses, "temperature": temperature, **terms.logged}
                sums.add(logged, correct, targets.shape[-1])
                if should_stop is not None and should_stop():
                    raise StopRequested
                if (step + 1) % PROGRESS_EVERY == 0:
                    yield StepsDone(epoch, step + 1, self.steps_per_epoch)
            yield self._end_epoch(epoch, sums, lr_at_start, started)
            if bool(self.inactive.all()):
                return

    def _end_epoch(self, epoch: int, sums: _EpochSums, lr: float, started: float) -> EpochDone:
        count = len(self.data.train_y)
        host = sums.to_host()
        evaluation = {name: value.cpu().tolist() for name, value in self.evaluate().items()}
        self.completed_epochs = epoch + 1
        seconds = time.perf_counter() - started
        rows: list[dict | None] = []
        new_failures: dict[int, str] = {}
        for k in range(len(self.members)):
            if k in self.failed:
                rows.append(None)
                continue
            if not host["finite"][k]:
                reason = f"training loss became {host['loss'][k]} in epoch {epoch}"
                self.failed[k] = reason
                new_failures[k] = reason
                rows.append(None)
                continue
            means = {name: host[name][k] / count for name in sums.names}
            row = {
                "epoch": epoch,
                "temperature": means["temperature"],
                "lr": lr,
                "train_loss": means["loss"],
                "train_acc": host["correct"][k] / count,
                "epoch_seconds": seconds,
            }
            row.update({name: evaluation[name][k] for name in EVALUATION_FIELDS if name in evaluation})
            for method in self.methods:
                row.update(method.row_fields(k, means))
            rows.append(row)
        if new_failures:
            self.inactive[list(new_failures)] = True
        return EpochDone(epoch, rows, new_failures)


class _EpochSums:
    """Batch-weighted sums over an epoch of each logged (K,) value, and correct counts, kept on the device."""

    def __init__(self, count: int, device: torch.device):
        self.names: list[str] = []
        self.weighted: torch.Tensor | None = None
        self.correct = torch.zeros(count, dtype=torch.long, device=device)

    def add(self, values: dict[str, torch.Tensor], correct: torch.Tensor, batch: int) -> None:
        with torch.no_grad():
            stacked = torch.stack(list(values.values()))
            if self.weighted is None:
                self.names, self.weighted = list(values), torch.zeros_like(stacked)
            self.weighted += stacked * batch
            self.correct += correct

    def to_host(self) -> dict[str, list]:
        """Every sum as a Python list per member, plus "correct" and whether the loss stayed "finite"."""
        assert self.weighted is not None, "an epoch has at least one step"
        sums = dict(zip(self.names, self.weighted.unbind(), strict=False))
        on_device = {**sums, "correct": self.correct, "finite": torch.isfinite(sums["loss"])}
        return {name: value.cpu().tolist() for name, value in on_device.items()}


GROUP_FIELDS = frozenset({"loss", "temperature"})
"""Epoch sums the group logs itself, beside its methods' terms."""


def _check_new_names(method: KDMethod, terms: Terms, found: Terms) -> None:
    """A method's terms must not replace another method's (or the group's) under the same name."""
    taken = (found.added.keys() & terms.added.keys()) | (
        found.logged.keys() & (terms.logged.keys() | GROUP_FIELDS)
    )
    if taken:
        raise ConfigError(
            f"KD method {method.name!r} names its term(s) {sorted(taken)}, already used by another method or "
            "the group; give them other names"
        )
