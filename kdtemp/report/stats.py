"""Statistics over seeds: the numbers a reviewer checks before believing a temperature effect."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    P(|T| > t_{1-alpha/2, n-1}) with T ~ noncentral t, n - 1 degrees of freedom, noncentrality d * sqrt(n).

    The lower tail P(T < -t) is taken as P(T' > t) for T' with the negated noncentrality: scipy 1.17's
    nct.cdf returns NaN for a lower tail far out (e.g. d = 30 with two pairs, d = 4.5 with three), nct.sf
    does not, and both sides of the sum are the same number."""
    df, noncentrality = n - 1, abs(effect_size) * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality))


def seeds_to_detect(
    min_effect: float, sd: float, power: float = POWER_TARGET, alpha: float = POWER_ALPHA, limit: int = 10_000
) -> int | None:
    """Planning, before the runs: the fewest pairs n >= 3 at which the two-sided paired t-test at level
    `alpha` reaches `power` when the true mean difference is `min_effect` and the sd of per-seed
    differences is `sd` (d = min_effect / sd); exact, from the noncentral t (`paired_power`).

    The effect is the smallest one worth finding, not an observed one: power computed from the observed
    effect only restates the p-value. At least three pairs, since two leave one degree of freedom and an
    exact sign-flip test over two seeds cannot go below p = 0.5 (`sign_flip_floor`). A NaN power counts
    as not reached, so a numerical failure of scipy's noncentral t can only ask for more seeds, never
    fewer. None when sd is not finite or <= 0, min_effect is not finite or <= 0, or more than `limit`
    pairs would be needed."""
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(min_effect) and min_effect > 0) or limit < 3:
        return None
    effect_size = min_effect / sd

    def reached(n: int) -> bool:
        return paired_power(effect_size, n, alpha) >= power  # False for NaN

    low, high = 2, 3  # not reached at low (n = 2 is never offered), reached at high; power grows with n
    while not reached(high):
        if high >= limit:
            return None
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if reached(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-seed difference (treated - control) and its t confidence interval [low, high]."""

    n: int
    mean: float
    low: float
    high: float


def paired_difference(
    treated: Sequence[float], control: Sequence[float], level: float = 0.95
) -> PairedDifference:
    """The size of an effect with its uncertainty, which a p-value alone does not give: mean of the
    differences +- t_{(1+level)/2, n-1} * sd / sqrt(n), the interval of scipy's ttest_rel.

    With n < 2 the interval is NaN. When every difference is the same (within TIE_TOLERANCE) the
    interval is [mean, mean]: zero spread, not a claim of certainty; `paired_t_test` gives no p-value
    then. Raises ValueError for unpaired lengths or a level outside (0, 1)."""
    if len(treated) != len(control):
        raise ValueError(f"unpaired: {len(treated)} treated and {len(control)} control values")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    differences = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    n, centre = len(differences), mean(differences.tolist())
    if n < 2:
        return PairedDifference(n, centre, math.nan, math.nan)
    if np.ptp(differences) <= TIE_TOLERANCE:
        return PairedDifference(n, centre, centre, centre)
    half_width = float(stats.t.ppf((1 + level) / 2, n - 1) * std(differences.tolist()) / math.sqrt(n))
    return PairedDifference(n, centre, centre - half_width, centre + half_width)


def tost_p_value(treated: Sequence[float], control: Sequence[float], margin: float) -> float:
    """p-value for "the paired means agree within +-margin" (Schuirmann's two one-sided tests): the
    larger of P(T_{n-1} >= (mean + margin) / se) and P(T_{n-1} <= (mean - margin) / se), se = sd / sqrt(n).

    A non-significant t-test is not evidence of no effect; this is. p < alpha exactly when the
    (1 - 2 alpha) interval of `paired_difference` lies inside (-margin, margin). NaN when n < 2, the
    lengths differ, margin <= 0, or every difference is the same (the rule of `paired_t_test`)."""
    if len(treated) != len(control) or len(treated) < 2 or not margin > 0:
        return math.nan
    differences = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    if np.ptp(differences) <= TIE_TOLERANCE:
        return math.nan
    n = len(differences)
    centre, standard_error = mean(differences.tolist()), std(differences.tolist()) / math.sqrt(n)
    above_lower = stats.t.sf((centre + margin) / standard_error, n - 1)
    below_upper = stats.t.cdf((centre - margin) / standard_error, n - 1)
    return float(max(above_lower, below_upper))


def sd_upper_bound(sd: float, df: int, confidence: float = 0.8) -> float:
    """One-sided upper `confidence` bound of a population sd from a sample sd with df degrees of freedom,
    sd * sqrt(df / chi2_{1-confidence, df}): a few pilot seeds underestimate the sd as often as not, and
    planning with the bound keeps `seeds_to_detect` from promising power it lacks.

    NaN for df < 1 or a sample sd that is not finite or < 0; ValueError for confidence outside (0, 1)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    if df < 1 or not math.isfinite(sd) or sd < 0:
        return math.nan
    return float(sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df)))


def sign_flip_floor(n: int) -> float:
    """Smallest two-sided p an exact sign-flip test over n paired seeds can give: 2 / 2**n (NaN, n < 1)."""
    return 2.0 ** (1 - n) if n >= 1 else math.nan
