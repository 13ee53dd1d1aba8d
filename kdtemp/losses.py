"""The KD loss family as pure functions of logits.

The convention everywhere (Hinton et al. 2015):

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

with the KL reduced by `batchmean` and computed from log-softmax, never from the log of a
probability that can underflow. alpha weights the distillation term (torchdistill's alpha is the CE
weight: ours = 1 - theirs). Temperature enters only here, which is why one batch and one teacher
pass can serve a whole grid.

Each function accepts a plain float or a 0-d tensor for the temperature and works unchanged under
`torch.func.vmap`, where the engine batches many students with their own temperatures.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Ensemble = Literal["mean_probs", "mean_logits", "weighted"]


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """z-score each sample's logits (Sun et al. 2024, logit standardization).

    Uses the unbiased std as the authors' code does; dividing the result by t0 gives the sample an
    effective temperature of t0 * std(logits).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def _maybe_standardize(logits: torch.Tensor, standardize: bool | torch.Tensor) -> torch.Tensor:
    if isinstance(standardize, torch.Tensor):
        return torch.where(standardize, standardize_logits(logits), logits)
    return standardize_logits(logits) if standardize else logits


def soft_target_log_probs(
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    ensemble: Ensemble = "mean_probs",
    weights: torch.Tensor | None = None,
    standardize: bool | torch.Tensor = False,
) -> torch.Tensor:
    """log of the soft targets at temperature T, for one teacher (B, C) or an ensemble (n, B, C).

    mean_probs: the mean of softmax(t_i / T); weighted: the same with `weights`; mean_logits:
    softmax(mean_i t_i / T). Computed in log space (logsumexp), so no probability is logged.
    """
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(0)
    teacher_logits = _maybe_standardize(teacher_logits, standardize)
    count = teacher_logits.shape[0]
    if count == 1:
        return F.log_softmax(teacher_logits[0] / temperature, dim=-1)
    if ensemble == "mean_logits":
        return F.log_softmax(teacher_logits.mean(dim=0) / temperature, dim=-1)
    if weights is None:
        weights = torch.full((count,), 1.0 / count, device=teacher_logits.device, dtype=teacher_logits.dtype)
    log_weights = torch.log(weights / weights.sum()).view(count, 1, 1)
    return torch.logsumexp(log_weights + F.log_softmax(teacher_logits / temperature, dim=-1), dim=0)


def soft_target_kl(student_logits: torch.Tensor, target_log_probs: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """KL(p_target || softmax(s / T)), summed over classes and averaged over the batch (`batchmean`)."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    per_sample = (target_log_probs.exp() * (target_log_probs - student_log_probs)).sum(dim=-1)
    return per_sample.mean()


def kd_terms(
    student_logits: torch.Tensor,
    target_log_probs: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor,
    standardize: bool | torch.Tensor = False,
) -> dict[str, torch.Tensor]:
    """The named terms: 'ce' on the raw logits and 'kd' = T^2 * KL at temperature T.

    With `standardize` the student's logits are z-scored before tempering, as logit-std asks; the
    targets must then come from standardized teacher logits too.
    """
    ce = F.cross_entropy(student_logits, targets)
    kd_logits = _maybe_standardize(student_logits, standardize)
    kd = temperature * temperature * soft_target_kl(kd_logits, target_log_probs, temperature)
    return {"ce": ce, "kd": kd}


def combine_terms(terms: dict[str, torch.Tensor], alpha: float | torch.Tensor) -> torch.Tensor:
    """(1 - alpha) * ce + alpha * kd, plus any extra named term (hints, penalties) at weight 1."""
    total = (1 - alpha) * terms["ce"] + alpha * terms["kd"]
    for name, value in terms.items():
        if name not in ("ce", "kd"):
            total = total + value
    return total


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor,
    alpha: float | torch.Tensor,
) -> torch.Tensor:
    """(1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)), KL batchmean."""
    target_log_probs = soft_target_log_probs(teacher_logits, temperature)
    return combine_terms(kd_terms(student_logits, target_log_probs, targets, temperature), alpha)


def hint_loss(projected_student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNets hint term (Romero et al. 2015): mean squared error between regressed and teacher features."""
    return (projected_student_features - teacher_features).pow(2).mean()
