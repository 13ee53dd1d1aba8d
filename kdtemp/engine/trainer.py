"""The supervised loop that trains one network on labels: the teacher's, and the students' no-KD
member when trained alone. Students distilled in lockstep train in kdtemp.group.student_group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kdtemp.data.dataset import Dataset
from kdtemp.engine.evaluation import split_metrics
from kdtemp.engine.loop import (
    PROGRESS_EVERY,
    EpochBatches,
    EpochDone,
    LoopSettings,
    StepsDone,
    StopRequested,
    autocast,
    dropout_seed,
    steps_per_epoch,
    to_memory_format,
)
from kdtemp.engine.optim import build_optimizer, learning_rate, set_learning_rate
from kdtemp.engine.randomness import DropoutStream


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
        """Metrics on the validation and the test split (`evaluation.split_metrics`)."""
        self.model.eval()
        channels_last = self.settings.channels_last
        with torch.no_grad(), autocast(self.settings.device, self.settings.amp):
            metrics = split_metrics(
                self.data,
                self.settings.eval_batch_size,
                lambda inputs: self.model(to_memory_format(inputs, channels_last)).float(),
            )
        self.model.train()
        return {name: float(value) for name, value in metrics.items()}

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
