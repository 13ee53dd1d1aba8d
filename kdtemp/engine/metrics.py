"""Evaluation metrics as sums over a chunk of logits, so they accumulate on the device.

Every function accepts logits of shape (..., B, C): the leading dimensions are members of a stacked
student group. Sums (not means) let chunks of a test set be added before one division.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from kdtemp.losses import Ensemble

CALIBRATION_BINS = 15


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, targets.expand(*log_probs.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return -picked.sum(dim=-1)


def correct_count(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == targets).sum(dim=-1)


def agreement_count(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """How many samples get the teacher's top-1 class."""
    return (logits.argmax(dim=-1) == teacher_logits.argmax(dim=-1)).sum(dim=-1)


def teacher_kl_sum(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Sum over samples of KL(softmax(teacher) || softmax(student)) at T = 1."""
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    student_log_probs = F.log_softmax(logits, dim=-1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1).sum(dim=-1)


def calibration_bins(
    logits: torch.Tensor, targets: torch.Tensor, bins: int = CALIBRATION_BINS
) -> torch.Tensor:
    """Per confidence bin: (count, sum of confidence, sum of correctness); shape (..., 3, bins).

    Bins are equal-width over (0, 1], as in Guo et al. 2017; a confidence of exactly 1 falls in the last.
    """
    probs = F.softmax(logits, dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == targets).to(probs.dtype)
    index = torch.clamp((confidence * bins).ceil().long() - 1, 0, bins - 1)
    shape = (*confidence.shape[:-1], bins)
    count = torch.zeros(shape, dtype=probs.dtype, device=probs.device).scatter_add_(
        -1, index, torch.ones_like(confidence)
    )
    conf_sum = torch.zeros(shape, dtype=probs.dtype, device=probs.device).scatter_add_(-1, index, confidence)
    correct_sum = torch.zeros(shape, dtype=probs.dtype, device=probs.device).scatter_add_(-1, index, correct)
    return torch.stack([count, conf_sum, correct_sum], dim=-2)


def expected_calibration_error(bins: torch.Tensor) -> torch.Tensor:
    """ECE = sum over bins of |accuracy - confidence| weighted by the bin's share of samples."""
    count, conf_sum, correct_sum = bins.unbind(dim=-2)
    return (correct_sum - conf_sum).abs().sum(dim=-1) / count.sum(dim=-1).clamp_min(1)


def soft_target_statistics(
    teacher_logits: torch.Tensor,
    temperature: float,
    ensemble: Ensemble = "mean_probs",
    weights: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Mean entropy (nats) and mean top-class probability of the soft targets at T: how soft they are.

    `teacher_logits` is (N, C) for one teacher or (n, N, C) for an ensemble combined by `ensemble`.
    """
    from kdtemp.losses import soft_target_log_probs

    log_probs = soft_target_log_probs(
        teacher_logits.double(),
        temperature,
        ensemble=ensemble,
        weights=None if weights is None else weights.double(),
    )
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(dim=-1).mean()
    return float(entropy), float(probs.max(dim=-1).values.mean())
