"""Seed statistics: t-quantiles (scipy and the table fallback), intervals, Welch's test."""

import math

import pytest
import scipy.stats as scipy_stats  # pinned in requirements.txt: the reference values

from analysis import stats
from analysis.stats import compare_greater, difference_interval, summarize, t_quantile


@pytest.mark.parametrize("q", [0.975, 0.95])
@pytest.mark.parametrize("df", [1, 1.1, 1.37, 2, 2.7, 3, 4, 5.5, 9, 14, 22, 37.3, 80, 150, 1000])
def test_table_fallback_matches_scipy(q, df):
    exact = scipy_stats.t.ppf(q, df)
    assert t_quantile(q, df, use_scipy=False) == pytest.approx(exact, rel=0.01)
    assert t_quantile(q, df) == pytest.approx(exact, rel=1e-9)


def test_summary_of_three_seeds():
    s = summarize([0.10, 0.12, 0.14])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.12), pytest.approx(0.02))
    # 95% t-interval: t(0.975, 2) = 4.303 times std / sqrt(3)
    assert s.ci == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-4)
    assert (s.low, s.high) == (pytest.approx(0.12 - s.ci), pytest.approx(0.12 + s.ci))


def test_summary_of_one_seed_has_no_interval():
    s = summarize([0.2])
    assert s.n == 1 and s.mean == 0.2 and math.isnan(s.std) and math.isnan(s.ci)
    assert summarize([]).n == 0 and summarize([float("nan"), 0.3]).n == 1


def test_welch_matches_scipy_one_sided():
    deep, shallow = [0.15, 0.17, 0.16, 0.18], [0.10, 0.13, 0.11]
    result = compare_greater(deep, shallow, margin=0.01)
    ref = scipy_stats.ttest_ind(deep, shallow, equal_var=False, alternative="greater")
    assert result.test == "welch" and result.greater
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert result.t_stat == pytest.approx(ref.statistic, rel=1e-9)
    assert result.diff == pytest.approx(0.165 - 0.34 / 3)
    # Same decision from the table fallback (no scipy).
    fallback = compare_greater(deep, shallow, margin=0.01, use_scipy=False)
    assert fallback.greater and fallback.p_value is None


def test_noise_hides_a_difference_of_means():
    # Means differ by 2 pp, but the seeds scatter by ~6 pp: not significant.
    result = compare_greater([0.10, 0.18, 0.08], [0.06, 0.12, 0.12], margin=0.01)
    assert result.test == "welch" and not result.greater and result.p_value > 0.05
    assert not compare_greater([0.10, 0.18, 0.08], [0.06, 0.12, 0.12], 0.01,
                               use_scipy=False).greater


def test_single_seed_uses_the_margin():
    assert compare_greater([0.121], [0.110], margin=0.01).greater          # +1.1 pp
    close = compare_greater([0.119], [0.110], margin=0.01)                 # +0.9 pp
    assert close.test == "margin" and not close.greater and math.isnan(close.ci)
    # One seed on one side only: still no noise estimate for that side.
    assert compare_greater([0.13, 0.14], [0.11], margin=0.01).test == "margin"


def test_difference_interval():
    diff, ci = difference_interval([0.2, 0.22, 0.21], [0.1, 0.12, 0.11])
    assert diff == pytest.approx(0.1)
    se = math.sqrt(0.01 ** 2 / 3 * 2)
    df = (2 * 0.01 ** 2 / 3) ** 2 / (2 * (0.01 ** 2 / 3) ** 2 / 2)   # = 4
    assert ci == pytest.approx(scipy_stats.t.ppf(0.975, df) * se, rel=1e-9)
    assert math.isnan(difference_interval([0.2], [0.1, 0.12])[1])


def test_identical_seeds_do_not_divide_by_zero():
    result = compare_greater([0.2, 0.2], [0.1, 0.1], margin=0.01)
    assert result.greater and result.ci == 0.0
    assert not compare_greater([0.1, 0.1], [0.1, 0.1], margin=0.01).greater


def test_scipy_is_used_when_installed():
    assert stats.scipy_available()
