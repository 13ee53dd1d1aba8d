"""Statistics over seeds against scipy and closed forms."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from kdtemp.report import stats


@pytest.mark.parametrize("seed", range(5))
def test_paired_t_test_is_scipys_on_random_data(seed):
    generator = np.random.default_rng(seed)
    n = int(generator.integers(2, 8))
    control = generator.uniform(0.5, 0.9, n)
    treated = control + generator.normal(0.01, 0.02, n)
    assert stats.paired_t_test(treated.tolist(), control.tolist()) == pytest.approx(
        scipy_stats.ttest_rel(treated, control).pvalue, rel=1e-12
    )


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy's own, on the tie
@pytest.mark.parametrize(
    "treated, control",
    [
        ([0.701, 0.702, 0.703], [0.700, 0.701, 0.702]),  # every seed gains one of 1000 test examples
        ([0.5, 0.75], [0.25, 0.5]),
    ],
)
def test_equal_differences_give_no_p_value_not_zero(treated, control):
    assert scipy_stats.ttest_rel(treated, control).pvalue < 0.05  # what a plain t-test would star
    assert math.isnan(stats.paired_t_test(treated, control))
    # the same tie after the float32 round trip the accuracies take through the runs' CSVs
    as_float32 = [float(np.float32(v)) for v in treated], [float(np.float32(v)) for v in control]
    assert math.isnan(stats.paired_t_test(*as_float32))


def test_differences_one_test_example_apart_are_tested():
    treated, control = [0.702, 0.702, 0.703], [0.700, 0.701, 0.702]  # differences 2, 1, 1 examples of 1000
    assert stats.paired_t_test(treated, control) == pytest.approx(
        scipy_stats.ttest_rel(treated, control).pvalue
    )


def _random_pairs(generator, n):
    control = generator.uniform(0.5, 0.9, n)
    return control + generator.normal(0.01, 0.02, n), control


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("level", [0.8, 0.9, 0.95, 0.99])
def test_paired_difference_is_scipys_confidence_interval(seed, n, level):
    treated, control = _random_pairs(np.random.default_rng(seed), n)
    scipy_interval = scipy_stats.ttest_rel(treated, control).confidence_interval(level)
    result = stats.paired_difference(treated.tolist(), control.tolist(), level)
    assert result.n == n
    assert result.mean == pytest.approx(float(np.mean(treated - control)), abs=1e-12)
    assert result.low == pytest.approx(scipy_interval.low, abs=1e-12)
    assert result.high == pytest.approx(scipy_interval.high, abs=1e-12)


def test_paired_difference_hand_worked():
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01; with 2 df the t quantile is closed-form,
    # t_q = (2q - 1) * sqrt(2 / (1 - (2q - 1)^2)), so the 95% half-width is t_0.975 * 0.01 / sqrt(3)
    result = stats.paired_difference([0.71, 0.72, 0.73], [0.70, 0.70, 0.70], 0.95)
    t_quantile = 0.95 * math.sqrt(2 / (1 - 0.95**2))
    half_width = t_quantile * 0.01 / math.sqrt(3)
    assert (result.n, result.mean) == (3, pytest.approx(0.02, abs=1e-15))
    assert result.low == pytest.approx(0.02 - half_width, abs=1e-12)
    assert result.high == pytest.approx(0.02 + half_width, abs=1e-12)


def test_paired_difference_degenerate_cases():
    single = stats.paired_difference([0.75], [0.70])
    assert single.n == 1 and single.mean == pytest.approx(0.05)
    assert math.isnan(single.low) and math.isnan(single.high)
    empty = stats.paired_difference([], [])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.low)
    # every seed gains one of 1000 test examples, also after a float32 round trip: zero spread
    treated, control = [0.701, 0.702, 0.703], [0.700, 0.701, 0.702]
    for values in [(treated, control), ([float(np.float32(v)) for v in treated], control)]:
        tie = stats.paired_difference(*values)
        assert tie.low == tie.mean == tie.high == pytest.approx(0.001, abs=1e-6)
    with pytest.raises(ValueError):
        stats.paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        stats.paired_difference([0.1, 0.2], [0.1, 0.3], level=1.0)


def _tost_by_hand(differences, margin):
    n = len(differences)
    centre = sum(differences) / n
    standard_error = math.sqrt(sum((d - centre) ** 2 for d in differences) / (n - 1)) / math.sqrt(n)
    t_lower, t_upper = (centre + margin) / standard_error, (centre - margin) / standard_error
    return max(scipy_stats.t.sf(t_lower, n - 1), scipy_stats.t.sf(-t_upper, n - 1))


@pytest.mark.parametrize("seed", range(6))
def test_tost_p_value_against_hand_statistics_shifted_t_tests_and_statsmodels(seed):
    generator = np.random.default_rng(seed)
    n = int(generator.integers(2, 12))
    treated, control = _random_pairs(generator, n)
    margin = float(generator.uniform(0.005, 0.05))
    p = stats.tost_p_value(treated.tolist(), control.tolist(), margin)
    assert p == pytest.approx(_tost_by_hand((treated - control).tolist(), margin), rel=1e-9)
    # H0 "difference <= -margin" is a one-sided t-test of treated + margin against control, and so on
    above_lower = scipy_stats.ttest_rel(treated + margin, control, alternative="greater").pvalue
    below_upper = scipy_stats.ttest_rel(treated - margin, control, alternative="less").pvalue
    assert p == pytest.approx(max(above_lower, below_upper), rel=1e-9)
    assert p == pytest.approx(ttost_paired(treated, control, -margin, margin)[0], rel=1e-9)


def test_tost_p_value_hand_worked():
    # differences 0.01, 0.02, 0.03: mean 0.02, se 0.01 / sqrt(3); margin 0.05 gives t = 7 sqrt(3) against
    # the lower bound and -3 sqrt(3) against the upper; with 2 df, P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2))
    def t2_cdf(t):
        return 0.5 + t / (2 * math.sqrt(2 + t * t))

    above_lower = 1 - t2_cdf(7 * math.sqrt(3))  # 0.0033...
    below_upper = t2_cdf(-3 * math.sqrt(3))  # 0.0175...: the binding side
    p = stats.tost_p_value([0.71, 0.72, 0.73], [0.70, 0.70, 0.70], 0.05)
    assert p == pytest.approx(max(above_lower, below_upper), rel=1e-9)
    assert 0.017 < p < 0.018


def test_tost_equivalent_at_5_percent_iff_90_percent_interval_inside_margin():
    generator = np.random.default_rng(1000)
    outcomes = set()
    for _ in range(300):
        n = int(generator.integers(2, 10))
        treated, control = _random_pairs(generator, n)
        margin = float(generator.uniform(0.002, 0.06))
        interval = scipy_stats.ttest_rel(treated, control).confidence_interval(0.9)
        inside = -margin < interval.low and interval.high < margin
        assert (stats.tost_p_value(treated.tolist(), control.tolist(), margin) < 0.05) == inside
        outcomes.add(inside)
    assert outcomes == {True, False}  # both sides of the iff were exercised


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_tost_p_value_is_nan_where_there_is_no_test():
    treated, control = [0.71, 0.72, 0.74], [0.70, 0.70, 0.70]
    assert math.isnan(stats.tost_p_value(treated[:1], control[:1], 0.05))
    assert math.isnan(stats.tost_p_value(treated, control[:2], 0.05))
    assert math.isnan(stats.tost_p_value(treated, control, 0.0))
    assert math.isnan(stats.tost_p_value(treated, control, -0.05))
    assert math.isnan(stats.tost_p_value([0.701, 0.702, 0.703], [0.700, 0.701, 0.702], 0.05))


@pytest.mark.parametrize("df, confidence", [(2, 0.8), (4, 0.8), (9, 0.9), (4, 0.5)])
def test_sd_upper_bound_covers_the_true_sd_at_its_confidence(df, confidence):
    generator = np.random.default_rng(df * 100 + int(confidence * 100))
    true_sd = 0.02
    sample_sds = generator.normal(0.7, true_sd, (20_000, df + 1)).std(axis=1, ddof=1)
    multiplier = stats.sd_upper_bound(1.0, df, confidence)
    for sample_sd in sample_sds[:50]:  # the bound scales with the sd, so one multiplier serves all
        assert stats.sd_upper_bound(float(sample_sd), df, confidence) == pytest.approx(sample_sd * multiplier)
    assert np.mean(sample_sds * multiplier >= true_sd) == pytest.approx(confidence, abs=0.01)


def test_sd_upper_bound_closed_forms():
    # chi-square quantiles in closed form: with 2 df, chi2_q = -2 ln(1 - q); with 1 df, chi2_q = z_{(1+q)/2}^2
    for confidence in [0.5, 0.8, 0.95]:
        expected_2 = 0.03 * math.sqrt(2 / (-2 * math.log(confidence)))
        assert stats.sd_upper_bound(0.03, 2, confidence) == pytest.approx(expected_2, rel=1e-12)
        z = scipy_stats.norm.ppf((1 + (1 - confidence)) / 2)
        assert stats.sd_upper_bound(0.03, 1, confidence) == pytest.approx(0.03 / z, rel=1e-9)
    assert stats.sd_upper_bound(0.03, 4, 0.8) > 0.03  # an upper bound exceeds the estimate


def test_sd_upper_bound_is_nan_without_a_sample_sd():
    for sd, df in [(0.02, 0), (0.02, -1), (math.nan, 3), (math.inf, 3), (-0.01, 3)]:
        assert math.isnan(stats.sd_upper_bound(sd, df))
    with pytest.raises(ValueError):
        stats.sd_upper_bound(0.02, 3, confidence=1.0)


def _statsmodels_power(effect_size, n, alpha=0.05):
    return TTestPower().power(effect_size=effect_size, nobs=n, alpha=alpha, alternative="two-sided")


def _assert_power_within_its_upper_tail_bound(effect_size, n):
    # P(T > c) <= power <= P(T > c) + P(T < 0), and P(T < 0) = Phi(-noncentrality) exactly
    critical, noncentrality = scipy_stats.t.ppf(0.975, n - 1), effect_size * math.sqrt(n)
    upper_tail = scipy_stats.nct.sf(critical, n - 1, noncentrality)
    power = stats.paired_power(effect_size, n)
    assert math.isfinite(power)
    assert upper_tail - 1e-12 <= power <= upper_tail + scipy_stats.norm.cdf(-noncentrality) + 1e-12


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own, on the NaN it returns
@pytest.mark.parametrize("n", range(2, 31))
def test_paired_power_is_statsmodels(n):
    compared = 0
    for effect_size in [0.0, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0]:
        expected = _statsmodels_power(effect_size, n)
        if math.isnan(expected):  # statsmodels' lower tail is scipy's nctdtr, which fails far out
            _assert_power_within_its_upper_tail_bound(effect_size, n)
            continue
        assert stats.paired_power(effect_size, n) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        compared += 1
    assert compared >= 7


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own, on the NaN it returns
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_power_is_finite_where_scipys_lower_tail_is_nan(n):
    critical = scipy_stats.t.ppf(0.975, n - 1)
    nan_seen = False
    for effect_size in np.linspace(0.05, 60, 150):
        noncentrality = effect_size * math.sqrt(n)
        nan_seen |= math.isnan(scipy_stats.nct.cdf(-critical, n - 1, noncentrality))
        _assert_power_within_its_upper_tail_bound(effect_size, n)
    if n == 2:
        assert nan_seen  # the failure this guards against: nct at 1 df, d = 30, in scipy 1.17


@pytest.mark.parametrize("effect_size", [0.3, 0.4, 0.5, 0.7, 1.0, 1.3, 1.7, 2.0, 2.5, 3.0])
def test_seeds_to_detect_is_statsmodels_sample_size(effect_size):
    sd = 0.02
    solved = TTestPower().solve_power(effect_size=effect_size, alpha=0.05, power=0.8, alternative="two-sided")
    n = stats.seeds_to_detect(effect_size * sd, sd, power=0.8, alpha=0.05)
    assert n == max(3, math.ceil(solved))
    assert _statsmodels_power(effect_size, n) >= 0.8
    if n > 3:
        assert _statsmodels_power(effect_size, n - 1) < 0.8
        assert stats.paired_power(effect_size, n) >= 0.8 > stats.paired_power(effect_size, n - 1)


def test_seeds_to_detect_other_power_and_alpha():
    for effect_size, power, alpha in [(0.5, 0.9, 0.01), (1.2, 0.95, 0.05), (0.8, 0.5, 0.1)]:
        solved = TTestPower().solve_power(effect_size=effect_size, alpha=alpha, power=power)
        n = stats.seeds_to_detect(effect_size, 1.0, power=power, alpha=alpha)
        assert n == max(3, math.ceil(solved))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_seeds_to_detect_never_offers_two_seeds_or_a_nan_power():
    for effect_size in [3.0, 5.0, 10.0, 30.0, 100.0]:
        n = stats.seeds_to_detect(effect_size, 1.0)
        assert n is not None and n >= 3
        assert stats.paired_power(effect_size, n) >= 0.8


def test_seeds_to_detect_reads_nan_power_as_not_reached(monkeypatch):
    exact = stats.paired_power

    def nan_at_three(effect_size, n, alpha=stats.POWER_ALPHA):
        return math.nan if n == 3 else exact(effect_size, n, alpha)

    assert stats.seeds_to_detect(10.0, 1.0) == 3
    monkeypatch.setattr(stats, "paired_power", nan_at_three)
    assert stats.seeds_to_detect(10.0, 1.0) == 4
    monkeypatch.setattr(stats, "paired_power", lambda effect_size, n, alpha=0.05: math.nan)
    assert stats.seeds_to_detect(10.0, 1.0) is None


def test_seeds_to_detect_none_where_there_is_nothing_to_plan():
    for min_effect, sd in [
        (0.01, 0.0),
        (0.01, -0.02),
        (0.01, math.nan),
        (0.01, math.inf),
        (0.0, 0.02),
        (-0.01, 0.02),
        (math.nan, 0.02),
    ]:
        assert stats.seeds_to_detect(min_effect, sd) is None
    # d = 0.01 needs about 78,500 pairs (statsmodels); past the limit
    assert _statsmodels_sample_size(0.01) > 10_000
    assert stats.seeds_to_detect(0.0001, 0.01) is None
    assert stats.seeds_to_detect(0.0001, 0.01, limit=100_000) == math.ceil(_statsmodels_sample_size(0.01))


def _statsmodels_sample_size(effect_size):
    return TTestPower().solve_power(effect_size=effect_size, alpha=0.05, power=0.8)


def _sign_flip_p(differences):
    observed = abs(sum(differences))
    flips = list(itertools.product([1, -1], repeat=len(differences)))
    extreme = sum(
        abs(sum(s * d for s, d in zip(signs, differences, strict=True))) >= observed - 1e-12
        for signs in flips
    )
    return extreme / len(flips)


@pytest.mark.parametrize("n", range(1, 7))
def test_sign_flip_floor_is_the_smallest_brute_force_p(n):
    magnitudes = [0.001 * 2**i for i in range(n)]  # distinct: no two flips tie unless they are mirror images
    smallest = min(
        _sign_flip_p([s * m for s, m in zip(signs, magnitudes, strict=True)])
        for signs in itertools.product([1, -1], repeat=n)
    )
    assert stats.sign_flip_floor(n) == pytest.approx(smallest, rel=1e-12)
