"""Statistics over seeds against scipy and closed forms."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kdtemp.report import stats


@pytest.mark.parametrize("seed", range(5))
def test_paired_t_test_is_scipys_on_random_data(seed):
    generator = np.random.default_rng(seed)
    n = int(generator.integers(2, 8))
    control = generator.uniform(0.5, 0.9, n)
    treated = control + generator.normal(0.01, 0.02, n)
    assert stats.paired_t_test(treated.tolist(), control.tolist()) == pytest.approx(
        scipy_stats.ttest_rel(treated, control).pvalue, rel=1e-12)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy's own, on the tie
@pytest.mark.parametrize("treated, control", [
    ([0.701, 0.702, 0.703], [0.700, 0.701, 0.702]),  # every seed gains one of 1000 test examples
    ([0.5, 0.75], [0.25, 0.5]),
])
def test_equal_differences_give_no_p_value_not_zero(treated, control):
    assert scipy_stats.ttest_rel(treated, control).pvalue < 0.05  # what a plain t-test would star
    assert math.isnan(stats.paired_t_test(treated, control))
    # the same tie after the float32 round trip the accuracies take through the runs' CSVs
    as_float32 = [float(np.float32(v)) for v in treated], [float(np.float32(v)) for v in control]
    assert math.isnan(stats.paired_t_test(*as_float32))


def test_differences_one_test_example_apart_are_tested():
    treated, control = [0.702, 0.702, 0.703], [0.700, 0.701, 0.702]  # differences 2, 1, 1 examples of 1000
    assert stats.paired_t_test(treated, control) == pytest.approx(scipy_stats.ttest_rel(treated, control).pvalue)
