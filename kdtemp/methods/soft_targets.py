"""Plain KD (Hinton et al. 2015): the student matches the teacher's (or ensemble's) soft targets.

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

This method names the two terms, `ce` and `kd`; the group weighs them by alpha (losses.combine_terms).
An ensemble's soft targets are mean_probs, mean_logits or weighted (losses.soft_target_log_probs).
Every member computes them, the no-KD baseline too (its alpha is 0), so a member's numbers do not
depend on its neighbours; only members that distil report `train_kd`.
"""

from __future__ import annotations

from typing import Any

from kdtemp.losses import kd_terms, soft_target_log_probs
from kdtemp.methods.base import KDMethod, Step, Terms


class SoftTargets(KDMethod):
    name = "kd"

    @classmethod
    def uses(cls, member) -> bool:
        return member.distills

    @classmethod
    def for_group(cls, members, group) -> SoftTargets:
        return cls(members, group)

    def terms(self, step: Step) -> Terms:
        teacher = self.group.teacher
        target_log_probs = soft_target_log_probs(
            step.teacher_logits.float(),
            step.temperature,
            ensemble=teacher.ensemble,
            weights=teacher.weights,
            standardize=step.standardize,
        )
        terms = kd_terms(step.logits, target_log_probs, step.targets, step.temperature, step.standardize)
        return Terms(added=terms, logged=terms)

    def row_fields(self, k: int, means: dict[str, float]) -> dict[str, Any]:
        return {"train_ce": means["ce"], "train_kd": means["kd"] if self.uses(self.members[k]) else None}
