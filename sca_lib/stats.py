"""The statistics behind the ablation report: t-intervals, paired differences, p-values, Holm.

- :func:`mean_ci`: mean over seeds with a two-sided 95 % t-interval, ``mean +- t(0.975, n-1) * sd / sqrt(n)``.
- :func:`paired_difference`: the mean difference ``a - b`` over the seeds both have, with its
  t-interval (paired by seed: each seed shares data order and initialisation across settings).
- :func:`paired_p_value`: the two-sided p-value of the paired t-test of that difference.
- :func:`holm`: Holm's step-down adjustment of a family of p-values. A comparison is called
  significant only when its *adjusted* p-value is below 0.05; the report adjusts the declared
  primary comparisons as one family and every other comparison as a second family.
- :func:`median_ci`: a distribution-free interval for a median (order statistics, binomial), what
  the benchmarks put around a median of per-round timing ratios.
- :func:`paired_difference` with ``level=1 - 0.05 / m`` gives the Bonferroni interval of a family
  of ``m`` comparisons: when it excludes zero, Holm also rejects (Holm is never less powerful).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import stats as _st

__all__ = ["t_quantile", "mean_ci", "paired_difference", "paired_p_value", "holm", "median_ci"]


# t(0.975, df) for df = 1..30 to three decimals, then the normal 1.96: the 95 % intervals printed in
# committed tables were computed with these, so they stay
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (nan for df < 1)."""
    if df < 1:
        return float("nan")
    if level == 0.95:
        return _T975[df - 1] if df <= len(_T975) else 1.96
    return float(_st.t.ppf(0.5 + level / 2, df))


def _clean(values: Sequence[float]) -> np.ndarray:
    return np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, float, int]:
    """(mean, low, high, n) of a two-sided t-interval; one value gives an infinite interval."""
    v = _clean(values)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n == 1:
        return m, float("-inf"), float("inf"), 1
    half = t_quantile(n - 1, level) * float(v.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half, n


def paired_difference(a: Dict[int, float], b: Dict[int, float], level: float = 0.95) -> Tuple[float, float, float, int]:
    """Mean difference ``a - b`` over the seeds both have, with its two-sided t-interval."""
    seeds = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in seeds], level)


def paired_p_value(a: Dict[int, float], b: Dict[int, float]) -> float:
    """Two-sided p-value of the paired t-test of ``a - b`` over shared seeds (nan with < 2 seeds;
    1 when every difference is zero, 0 when they are all equal and non-zero)."""
    d = _clean([a[s] - b[s] for s in sorted(set(a) & set(b))])
    if len(d) < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 1.0 if float(d.mean()) == 0.0 else 0.0
    t = float(d.mean()) / (sd / math.sqrt(len(d)))
    return float(2 * _st.t.sf(abs(t), len(d) - 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input order (nan stays nan and is not counted in the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def median_ci(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """A two-sided ``level`` confidence interval for the median of the distribution ``values`` were
    drawn from, assuming nothing about its shape: ``(x_(j), x_(n+1-j))`` of the sorted values, with
    ``j`` the largest order such that ``2 * P(Binomial(n, 1/2) <= j - 1) <= 1 - level`` (the interval
    covers at least ``level``). ``(nan, nan)`` when ``n`` is too small for ``level`` (n < 6 for 95 %)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if not 0 < level < 1:
        raise ValueError(f"median_ci: level must be in (0, 1), got {level}")
    j = int(_st.binom.ppf((1 - level) / 2, n, 0.5)) if n else 0
    if j < 1:
        return float("nan"), float("nan")
    return float(x[j - 1]), float(x[n - j])
