"""Statistics over seeds: the numbers a reviewer checks before believing a temperature effect."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

TIE_TOLERANCE = 1e-6
"""Per-seed differences closer than this count as equal: far below 1/N_test for any real test set, far
above the float32 rounding of two fractions (under 1.2e-7)."""


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def ci95_half_width(values: Sequence[float]) -> float:
    """Half-width of the 95% t-interval of the mean: t_{0.975, n-1} * sd / sqrt(n)."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std(values) / math.sqrt(n))


def paired_t_test(treated: Sequence[float], control: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test on per-seed differences (scipy.stats.ttest_rel).

    NaN when n < 2 or when every difference is the same: with no spread t = mean / (0 / sqrt(n)) is
    undefined, not infinitely significant. Test accuracies are multiples of 1/N_test, so two or three
    seeds that each gain exactly one test example are common, and scipy would give p ~ 0 for them.
    "The same" allows TIE_TOLERANCE: accuracies (fractions) reach the CSVs through float32.
    """
    if len(treated) != len(control) or len(treated) < 2:
        return math.nan
    differences = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    if np.ptp(differences) <= TIE_TOLERANCE:
        return math.nan
    return float(stats.ttest_rel(treated, control).pvalue)
