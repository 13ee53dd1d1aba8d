"""Logit standardisation (Sun et al. 2024): the KD term sees z-scored logits, teacher's and student's.

Dividing z-scored logits by t0 gives each sample an effective temperature t0 * std(logits): this
module decides which members z-score (a (K,) mask handed to the KD term, losses.standardize_logits)
and logs that per-sample effective temperature, averaged over the epoch, as `effective_temperature`.
"""

from __future__ import annotations

from typing import Any

import torch

from kdtemp.losses import standardized_logit_std
from kdtemp.methods.base import KDMethod, Step, Terms


class LogitStandardization(KDMethod):
    name = "logit-std"

    def __init__(self, members, group):
        super().__init__(members, group)
        self.mask = torch.tensor([self.uses(m) for m in self.members], device=group.device)

    @classmethod
    def uses(cls, member) -> bool:
        return member.standardize or cls.name in member.methods

    def standardizes(self) -> torch.Tensor:
        return self.mask

    def terms(self, step: Step) -> Terms:
        """No loss term of its own; logs t0 * the batch mean std of the logits it z-scores, per member.

        The std is a scalar for a shared teacher, (K,) with per-member teachers.
        """
        teacher = self.group.teacher
        with torch.no_grad():
            spread = standardized_logit_std(
                step.teacher_logits.float(), ensemble=teacher.ensemble, weights=teacher.weights
            ).mean(dim=-1)
            effective = step.temperature * spread
        return Terms(logged={"effective": effective})

    def row_fields(self, k: int, means: dict[str, float]) -> dict[str, Any]:
        return {"effective_temperature": means["effective"]} if self.uses(self.members[k]) else {}
