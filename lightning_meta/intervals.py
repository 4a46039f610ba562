"""Means over seeds with a t-interval: Student's t quantile computed here, with no statistics package.

The 95 % interval of the mean of ``n`` values is ``mean +- t(0.975, n - 1) * s / sqrt(n)`` (``s``: the sample
standard deviation). The t quantile inverts Student's cumulative distribution (Newton's method), integrated
numerically: with ``x = sqrt(df) tan(a)`` the density becomes ``cos(a) ** (df - 1)`` up to a constant, smooth on
``[0, pi / 2)`` at any ``x``, which Simpson's rule integrates to within 1e-12.

Examples:
    >>> round(t_quantile(0.975, 2), 3)  # the 95 % two-sided quantile for 3 seeds
    4.303
    >>> mean, half = mean_interval([0.50, 0.54, 0.58])
    >>> round(mean, 3), round(half, 3)  # 0.54 +- 4.303 * 0.04 / sqrt(3)
    (0.54, 0.099)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SIMPSON_INTERVALS = 2000
"""Intervals of Simpson's rule (an even number)."""


def t_density(x: float, df: int) -> float:
    """Density of Student's t distribution with ``df`` degrees of freedom."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int) -> float:
    """Student's t cumulative distribution: ``1/2 + integral of the density from 0 to x``, integrated over the angle
    ``a = atan(x / sqrt(df))``, in which the density is ``Gamma((df + 1) / 2) / (sqrt(pi) Gamma(df / 2))`` times
    ``cos(a) ** (df - 1)``."""
    end = math.atan(x / math.sqrt(df))
    h = end / SIMPSON_INTERVALS
    weights = (1 if i in (0, SIMPSON_INTERVALS) else 4 if i % 2 else 2 for i in range(SIMPSON_INTERVALS + 1))
    area = h / 3 * sum(w * math.cos(i * h) ** (df - 1) for i, w in enumerate(weights))
    return 0.5 + math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi) * area


def t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t with ``df`` >= 1 degrees of freedom (``0 < p < 1``).

    Newton's method from 0 converges from below without overshoot: the distribution function is concave right of 0.
    """
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    x = 0.0
    for _ in range(200):
        step = (p - t_cdf(x, df)) / t_density(x, df)
        x += step
        if step < 1e-12 * max(1.0, x):
            return x
    raise RuntimeError(f"t_quantile({p}, {df}) did not converge")  # not reached for 0.5 <= p < 1 - 1e-12


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the two-sided t-interval of the mean; the half-width is NaN for fewer than 2
    values (no spread to estimate)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    deviation = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile((1 + confidence) / 2, n - 1) * deviation / math.sqrt(n)
