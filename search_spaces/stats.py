"""Small-sample statistics for seeds: mean, standard deviation, t-based 95% intervals and
Welch's t-test.

Studies run 1-5 seeds per cell, so intervals use Student's t, not the normal
approximation. scipy (installed with mlflow) gives exact quantiles and p-values; without
it a table of critical values is interpolated in 1/df and p-values are not reported.

Standard library and scipy only: the onset design (`search_spaces.onset`) decides with
these tests, and `analysis.stats` re-exports them for the findings, so both apply one
definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

try:  # scipy comes with mlflow; the fallback keeps `analysis` usable without it.
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _scipy_stats = None

# Two-sided 95% (q = 0.975) and one-sided 95% (q = 0.95) critical values of Student's t.
# Dense at small df: Welch's df for 2-3 seeds per side is often fractional between 1 and 4.
_T_TABLE_DF = (1, 1.125, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20,
               25, 30, 40, 60, 120)
_T_TABLE = {
    0.975: (12.706, 9.811, 8.028, 6.017, 4.949, 4.303, 3.575, 3.182, 2.94, 2.776, 2.571,
            2.447, 2.365, 2.306, 2.262, 2.228, 2.179, 2.131, 2.086, 2.06, 2.042, 2.021, 2.0,
            1.98),
    0.95: (6.314, 5.247, 4.548, 3.705, 3.225, 2.92, 2.558, 2.353, 2.222, 2.132, 2.015, 1.943,
           1.895, 1.86, 1.833, 1.812, 1.782, 1.753, 1.725, 1.708, 1.697, 1.684, 1.671, 1.658),
}
_NORMAL_QUANTILE = {0.975: 1.960, 0.95: 1.645}


def t_quantile(q: float, df: float, use_scipy: bool = True) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (df may be fractional,
    as Welch's df is). Without scipy only q = 0.975 and q = 0.95 are available."""
    if df <= 0 or not math.isfinite(df):
        raise ValueError(f"degrees of freedom must be positive and finite, got {df}")
    if use_scipy and _scipy_stats is not None:
        return float(_scipy_stats.t.ppf(q, df))
    if q not in _T_TABLE:
        raise ValueError(f"without scipy only q in {sorted(_T_TABLE)} is tabulated, got {q}")
    return _interpolate_t_table(q, df)


def _interpolate_t_table(q: float, df: float) -> float:
    """Log-log interpolation between tabulated df (within 1% of the exact quantile);
    beyond df = 120 linear in 1/df towards the normal quantile."""
    dfs, values = _T_TABLE_DF, _T_TABLE[q]
    if df <= dfs[0]:
        return values[0]
    if df >= dfs[-1]:
        return _NORMAL_QUANTILE[q] + (values[-1] - _NORMAL_QUANTILE[q]) * dfs[-1] / df
    for i in range(1, len(dfs)):
        if df <= dfs[i]:
            w = math.log(df / dfs[i - 1]) / math.log(dfs[i] / dfs[i - 1])
            return math.exp((1 - w) * math.log(values[i - 1]) + w * math.log(values[i]))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with its spread. `ci` is the half-width of the 95% interval
    (mean +- ci); std and ci are NaN for a single seed."""

    n: int
    mean: float
    std: float
    ci: float

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, sample standard deviation (ddof=1) and the t-based `level` interval."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    ci = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, ci)


@dataclass(frozen=True)
class Comparison:
    """`a` minus `b` (e.g. deeper minus shallower training error) and whether a is
    larger by more than seed noise.

    test: "welch" (one-sided Welch t-test at alpha, both sides with >= 2 seeds) or
    "margin" (a single seed somewhere: a - b > margin). ci is the half-width of the
    two-sided 95% interval of the difference (NaN under "margin")."""

    diff: float
    ci: float
    test: str
    greater: bool
    p_value: float | None = None
    t_stat: float | None = None
    df: float | None = None


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's t statistic and Welch-Satterthwaite degrees of freedom for mean(a) - mean(b),
    and the standard error of the difference. Needs >= 2 values on each side."""
    sa, sb = summarize(a), summarize(b)
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical seeds on both sides: no noise, the sign decides
        diff = sa.mean - sb.mean
        return (math.copysign(math.inf, diff) if diff else 0.0), float(sa.n + sb.n - 2), 0.0
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    return (sa.mean - sb.mean) / se, df, se


def compare_greater(a: Sequence[float], b: Sequence[float], margin: float,
                    alpha: float = 0.05, use_scipy: bool = True) -> Comparison:
    """Is mean(a) larger than mean(b) by more than seed-to-seed noise?

    With >= 2 seeds on both sides: one-sided Welch t-test, H1: mean(a) > mean(b), at `alpha`
    (p-value from scipy; without scipy the t statistic is compared with the tabulated
    critical value, alpha = 0.05 only). With a single seed on either side there is no
    noise estimate, so the difference must exceed `margin` (same unit as the values).
    """
    sa, sb = summarize(a), summarize(b)
    if sa.n == 0 or sb.n == 0:
        raise ValueError("compare_greater needs at least one value on each side")
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Comparison(diff, math.nan, "margin", diff > margin)
    t_stat, df, se = welch(a, b)
    if se == 0.0:
        return Comparison(diff, 0.0, "welch", diff > 0, 0.0 if diff > 0 else 1.0, t_stat, df)
    ci = t_quantile(0.975, df, use_scipy) * se
    if use_scipy and _scipy_stats is not None:
        p_value = float(_scipy_stats.t.sf(t_stat, df))
        return Comparison(diff, ci, "welch", p_value < alpha, p_value, t_stat, df)
    if alpha != 0.05:
        raise ValueError(f"without scipy only alpha = 0.05 is tabulated, got {alpha}")
    return Comparison(diff, ci, "welch", t_stat > t_quantile(0.95, df, False), None, t_stat, df)


def difference_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its Welch 95% interval (NaN with one seed
    on either side)."""
    sa, sb = summarize(a), summarize(b)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return diff, math.nan
    _, df, se = welch(a, b)
    return diff, (t_quantile(0.975, df) * se if se > 0 else 0.0)


def scipy_available() -> bool:
    return _scipy_stats is not None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: sort ascending, multiply
    the i-th smallest (0-based) by m - i, carry the running maximum, cap at 1. Rejecting
    where the adjusted p < alpha keeps the family-wise error rate at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def welch_two_sided(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float | None]:
    """mean(a) - mean(b), the half-width of its Welch 95% interval and the two-sided
    Welch p-value (NaN / None with one seed on either side; p None without scipy)."""
    diff, ci = difference_interval(a, b)
    if math.isnan(ci):
        return diff, ci, None
    t_stat, df, se = welch(a, b)
    if se == 0.0:
        return diff, 0.0, (1.0 if diff == 0 else 0.0)
    if _scipy_stats is None:
        return diff, ci, None
    return diff, ci, float(2 * _scipy_stats.t.sf(abs(t_stat), df))
