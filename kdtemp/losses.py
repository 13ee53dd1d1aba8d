"""The KD loss family as pure functions of logits.

The convention everywhere (Hinton et al. 2015):

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

with the KL reduced by `batchmean` and computed from log-softmax, never from the log of a
probability that can underflow. alpha weights the distillation term (torchdistill's alpha is the CE
weight: ours = 1 - theirs). Temperature enters only here, which is why one batch and one teacher
pass can serve a whole grid.

Every function takes logits with optional leading member dimensions, (..., B, C), and a temperature
that is a float, a 0-d tensor, or one value per member (shape (...)): the engine evaluates a whole
stacked group of students, each with its own temperature, in one call. They work under vmap too.
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


def _broadcastable(value, trailing: int = 2):
    """A per-member value of shape (...) given `trailing` unit dims to broadcast against logits.

    Floats and 0-d tensors (one student, or a member under vmap) pass through unchanged.
    """
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.view(*value.shape, *([1] * trailing))
    return value


def _maybe_standardize(
    logits: torch.Tensor, standardize: bool | torch.Tensor, trailing: int = 2
) -> torch.Tensor:
    if isinstance(standardize, torch.Tensor):
        return torch.where(_broadcastable(standardize, trailing), standardize_logits(logits), logits)
    return standardize_logits(logits) if standardize else logits


def soft_target_log_probs(
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    ensemble: Ensemble = "mean_probs",
    weights: torch.Tensor | None = None,
    standardize: bool | torch.Tensor = False,
) -> torch.Tensor:
    """log of the soft targets at temperature T, for one teacher (..., B, C) or an ensemble (..., n, B, C).

    mean_probs: the mean of softmax(t_i / T); weighted: the same with `weights`; mean_logits:
    softmax(mean_i t_i / T). Computed in log space (logsumexp), so no probability is logged.
    A 2-D input is one teacher; a 3-D or 4-D input has a teacher axis third from the end.
    """
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(0)
    count = teacher_logits.shape[-3]
    if count == 1:
        single = _maybe_standardize(teacher_logits[..., 0, :, :], standardize)
        return F.log_softmax(single / _broadcastable(temperature), dim=-1)
    if ensemble == "mean_logits":
        averaged = _maybe_standardize(teacher_logits.mean(dim=-3), standardize)
        return F.log_softmax(averaged / _broadcastable(temperature), dim=-1)
    log_weights = torch.log(_teacher_weights(count, weights, teacher_logits)).view(count, 1, 1)
    each = _maybe_standardize(teacher_logits, standardize, trailing=3) / _broadcastable(temperature, 3)
    return torch.logsumexp(log_weights + F.log_softmax(each, dim=-1), dim=-3)


def _teacher_weights(count: int, weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The ensemble's teacher weights, normalised to sum to 1 (uniform when none are given)."""
    if weights is None:
        return torch.full((count,), 1.0 / count, device=like.device, dtype=like.dtype)
    return weights / weights.sum()


def standardized_logit_std(
    teacher_logits: torch.Tensor, *, ensemble: Ensemble = "mean_probs", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sample, the std that logit-std divides the soft targets' logits by: shape (..., B).

    t0 times it is the sample's effective temperature (Sun et al. 2024). It is the std of the very
    logits `soft_target_log_probs(..., standardize=True)` z-scores: one teacher's, or with
    mean_logits the averaged logits'. mean_probs and weighted z-score each teacher apart before
    mixing probabilities, so no single std applies; theirs is the ensemble-weighted mean of the
    teachers' stds (uniform weights for mean_probs).
    """
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(0)
    count = teacher_logits.shape[-3]
    if count == 1:
        return teacher_logits[..., 0, :, :].std(dim=-1)
    if ensemble == "mean_logits":
        return teacher_logits.mean(dim=-3).std(dim=-1)
    each = teacher_logits.std(dim=-1)  # (..., n, B)
    return (_teacher_weights(count, weights, each).view(count, 1) * each).sum(dim=-2)


def soft_target_kl(
    student_logits: torch.Tensor, target_log_probs: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """KL(p_target || softmax(s / T)), summed over classes and averaged over the batch (`batchmean`)."""
    student_log_probs = F.log_softmax(student_logits / _broadcastable(temperature), dim=-1)
    per_sample = (target_log_probs.exp() * (target_log_probs - student_log_probs)).sum(dim=-1)
    return per_sample.mean(dim=-1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch, per member for (..., B, C) logits and (B,) targets."""
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, targets.expand(log_probs.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return -picked.mean(dim=-1)


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
    ce = cross_entropy(student_logits, targets)
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


def hint_loss(
    projected_student_features: torch.Tensor, teacher_features: torch.Tensor, member_dims: int = 0
) -> torch.Tensor:
    """FitNets hint term (Romero et al. 2015): mean squared error between regressed and teacher features.

    With `member_dims` leading member dimensions (a stacked group: (K, B, ...)) one mean per member.
    """
    squared = (projected_student_features - teacher_features).pow(2)
    return squared.flatten(member_dims).mean(dim=-1)
