"""Exact tail probabilities for the statistical tests, on NumPy and the standard library alone."""
from __future__ import annotations

import math

__all__ = ["chi2_sf"]


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi^2 with integer ``df`` >= 1 degrees of freedom, in closed form.

    With y = x / 2: for even df = 2m, e^-y sum_{i<m} y^i / i! (the Poisson tail); for odd
    df = 2m + 1, erfc(sqrt(y)) + e^-y sum_{i<m} y^(i + 1/2) / Gamma(i + 3/2).
    """
    df = int(df)
    if df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    if x <= 0:
        return 1.0
    y = 0.5 * float(x)
    m, odd = divmod(df, 2)
    if odd:
        terms = (math.exp((i + 0.5) * math.log(y) - y - math.lgamma(i + 1.5)) for i in range(m))
        return min(1.0, math.erfc(math.sqrt(y)) + sum(terms))
    return min(1.0, sum(math.exp(i * math.log(y) - y - math.lgamma(i + 1)) for i in range(m)))
