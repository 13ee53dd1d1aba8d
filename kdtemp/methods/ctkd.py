"""CTKD's learnable temperature (Li et al. 2023): T = t_min + t_range * sigmoid(theta), one theta per
member, trained adversarially: the KD term sees theta through a gradient-reversal layer whose weight
follows a cosine curriculum from 0 to -lambda_max, so theta climbs the KD loss the student descends.
An optional penalty, penalty * (T - t_target)^2, pulls T towards t_target the ordinary way.

Members without a learnable schedule keep their scheduled temperature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from kdtemp.methods.base import KDMethod, OptimizerSlice, RestoreOptimizer, Step, Terms
from kdtemp.temperature.schedules import LearnableSchedule

# --- the math, as pure functions ---------------------------------------------------------------


def reversal_weight(schedule: LearnableSchedule, epoch: int) -> float:
    """Gradient-reversal weight: a cosine ramp from 0 at epoch 0 to -lambda_max at curriculum_epochs."""
    ramp = min(epoch, schedule.curriculum_epochs) / schedule.curriculum_epochs
    return -schedule.lambda_max * (1 - math.cos(math.pi * ramp)) / 2


def initial_theta(schedule: LearnableSchedule, t0: float) -> float:
    """theta such that t_min + t_range * sigmoid(theta) = t0, t0 held 1% inside the range's ends."""
    fraction = (t0 - schedule.t_min) / schedule.t_range
    fraction = min(max(fraction, 0.01), 0.99)
    return math.log(fraction / (1 - fraction))


def learned_temperature(
    theta: torch.Tensor, t_min: torch.Tensor | float, t_range: torch.Tensor | float
) -> torch.Tensor:
    return t_min + t_range * torch.sigmoid(theta)


def scale_gradient(value: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """Identity forward, gradient multiplied by `weight` backward (a gradient-reversal layer when < 0).

    Written with detach rather than a custom autograd.Function so that it works under vmap.
    """
    return value.detach() + weight * (value - value.detach())


# --- the method --------------------------------------------------------------------------------


class LearnableTemperature(KDMethod):
    """Per-member CTKD parameters as (K,) tensors; theta is optimised in its own group, no weight decay."""

    name = "ctkd"

    @classmethod
    def uses(cls, member) -> bool:
        return member.learnable is not None

    def __init__(self, members, group):
        super().__init__(members, group)
        device, epochs = group.device, group.settings.epochs

        def column(get, default: float) -> torch.Tensor:
            values = [get(m.learnable) if m.learnable is not None else default for m in self.members]
            return torch.tensor(values, dtype=torch.float32, device=device)

        self.mask = torch.tensor([self.uses(m) for m in self.members], device=device)
        thetas = [initial_theta(m.learnable, m.t0) if m.learnable is not None else 0.0 for m in self.members]
        self.theta = torch.tensor(thetas, dtype=torch.float32, device=device).requires_grad_()
        self.t_min = column(lambda s: s.t_min, 1.0)
        self.t_range = column(lambda s: s.t_range, 1.0)
        self.t_max = column(lambda s: s.t_max if s.t_max is not None else math.inf, math.inf)
        self.penalty = column(lambda s: s.penalty, 0.0)
        self.t_target = column(lambda s: s.t_target or 1.0, 1.0)
        reversal = [
            [reversal_weight(m.learnable, e) if m.learnable is not None else 0.0 for e in range(epochs)]
            for m in self.members
        ]
        self.reversal = torch.tensor(reversal, dtype=torch.float32, device=device)
        """Gradient-reversal weight per member and epoch, shape (K, epochs)."""

    def temperature(self, temperature: torch.Tensor, epoch: int) -> torch.Tensor:
        reversed_theta = scale_gradient(self.theta, self.reversal[:, epoch])
        learned = torch.minimum(learned_temperature(reversed_theta, self.t_min, self.t_range), self.t_max)
        return torch.where(self.mask, learned, temperature)

    def terms(self, step: Step) -> Terms:
        """The `penalty` term, penalty * (T - t_target)^2 on the un-reversed T (0 for other members)."""
        plain = learned_temperature(self.theta, self.t_min, self.t_range)
        penalty = torch.where(self.mask, self.penalty * (plain - self.t_target) ** 2, torch.zeros_like(plain))
        return Terms(added={"penalty": penalty}, logged={"penalty": penalty})

    def row_fields(self, k: int, means: dict[str, float]) -> dict[str, Any]:
        schedule = self.members[k].learnable
        return {"train_penalty": means["penalty"]} if schedule is not None and schedule.penalty > 0 else {}

    def optimizer_groups(self) -> list[dict]:
        return [{"params": [self.theta], "weight_decay": 0.0}]

    def member_state(self, k: int, optimizer_slice: OptimizerSlice) -> dict[str, Any]:
        return {"theta": self.theta[k].detach().clone(), "theta_optimizer": optimizer_slice(self.theta)}

    def load_member_states(self, states: Sequence[dict], restore: RestoreOptimizer) -> None:
        """A member whose checkpoint has no theta (it trained in a group without CTKD) keeps its initial
        theta and zero optimizer moments: exactly its state, since its theta never had a gradient."""
        with torch.no_grad():
            self.theta.copy_(
                torch.stack([s.get("theta", self.theta[k].detach().cpu()) for k, s in enumerate(states)]).to(
                    self.theta.device
                )
            )
        slices = [s.get("theta_optimizer") or {} for s in states]
        present = next((s for s in slices if s), None)
        if present is not None:
            blank = {
                key: value.clone() if key == "step" else torch.zeros_like(value)
                for key, value in present.items()
            }
            restore(self.theta, [s or blank for s in slices])
