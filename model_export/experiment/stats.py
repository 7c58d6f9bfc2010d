"""Confidence intervals of means over repeats (Student t) and paired tests of two methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its two-sided t confidence interval.

    ``half = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (ddof 1). One value gives a NaN half-width; NaN values are left out.

    Raises:
        ValueError: no finite value, or ``confidence`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        raise ValueError("no finite value to average")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, half


@dataclass(frozen=True)
class PairedTest:
    """Summary of paired differences ``a - b``.

    Attributes:
        n: number of pairs.
        mean: mean difference.
        se: its standard error ``s / sqrt(n)`` (NaN for one pair).
        ci_low, ci_high: two-sided t confidence interval of the mean difference.
        t_p: two-sided p-value of the paired t-test (``scipy.stats.ttest_1samp`` of the differences).
        wilcoxon_p: two-sided p-value of the Wilcoxon signed-rank test (NaN when every difference is 0
            or fewer than 2 pairs).
    """

    n: int
    mean: float
    se: float
    ci_low: float
    ci_high: float
    t_p: float
    wilcoxon_p: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_test(diffs: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Mean, CI, paired t-test and Wilcoxon signed-rank test of paired differences (NaN values left out).

    Raises:
        ValueError: no finite difference, or ``confidence`` outside (0, 1).
    """
    x = np.asarray([v for v in diffs if v is not None and math.isfinite(v)], dtype=np.float64)
    mean, half = mean_ci(x.tolist(), confidence)
    if x.size < 2:
        return PairedTest(int(x.size), mean, math.nan, math.nan, math.nan, math.nan, math.nan)
    se = float(x.std(ddof=1) / math.sqrt(x.size))
    if se == 0.0:
        t_p = 1.0 if mean == 0.0 else 0.0
    else:
        t_p = float(stats.ttest_1samp(x, 0.0).pvalue)
    if np.all(x == 0):
        w_p = math.nan
    else:
        w_p = float(stats.wilcoxon(x, zero_method="wilcox", alternative="two-sided").pvalue)
    return PairedTest(int(x.size), mean, se, mean - half, mean + half, t_p, w_p)
