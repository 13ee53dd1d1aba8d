"""Statistics over seeds: the numbers a reviewer checks before believing a temperature effect."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

TIE_TOLERANCE = 1e-6
"""Per-seed differences closer than this count as equal: far below 1/N_test for any real test set, far
above the float32 rounding of two fractions (under 1.2e-7) that runs written before exact counts carry."""


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
    "The same" allows TIE_TOLERANCE: runs written before accuracies were exact counts hold them through
    float32, and a report may read such runs.
    """
    if len(treated) != len(control) or len(treated) < 2:
        return math.nan
    differences = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    if np.ptp(differences) <= TIE_TOLERANCE:
        return math.nan
    return float(stats.ttest_rel(treated, control).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979): the i-th smallest of m p-values becomes
    max over j <= i of (m - j) * p_(j), clipped at 1, so "adjusted p < 0.05" holds the chance of any
    false star in the family at 5%. NaN p-values (no test) stay NaN and are not counted in m."""
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(sorted(tested, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (len(tested) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


POWER_ALPHA, POWER_TARGET = 0.05, 0.8


def paired_power(effect_size: float, n: int, alpha: float = POWER_ALPHA) -> float:
    """Power of the two-sided paired t-test with n pairs at effect size d = mean / sd of the differences:
    P(|T| > t_{1-alpha/2, n-1}) with T ~ noncentral t, n - 1 degrees of freedom, noncentrality d * sqrt(n)."""
    df, noncentrality = n - 1, abs(effect_size) * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_needed(
    differences: Sequence[float], power: float = POWER_TARGET, limit: int = 1_000_000
) -> int | None:
    """The fewest pairs n >= 2 at which a two-sided paired t-test (alpha 0.05) reaches `power`, if the
    per-seed differences keep their observed mean and sd; exact, from the noncentral t (`paired_power`).

    None when there is nothing to scale: fewer than two differences, no spread (the test is undefined),
    identical means, or more than `limit` pairs."""
    if (
        len(differences) < 2
        or np.ptp(differences) <= TIE_TOLERANCE
        or abs(mean(differences)) <= TIE_TOLERANCE
    ):
        return None
    effect_size = mean(differences) / std(differences)
    low, high = 1, 2  # power(low) < target <= power(high); power grows with n
    while paired_power(effect_size, high) < power:
        if high >= limit:
            return None
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if paired_power(effect_size, middle) < power else (low, middle)
    return high
