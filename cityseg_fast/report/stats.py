"""Statistics of a study over seeds: mean ± standard deviation, and Welch's t-test between two settings.

    s = summarize([0.31, 0.33, 0.32])      # Summary(n=3, mean=0.32, std=0.01, se=0.0058)
    w = welch(a, b)                        # Welch(diff, t, df, p); None with fewer than 2 seeds on a side
    w.significant                          # p < ALPHA: a difference larger than the seed spread

Welch's t-test does not assume the two settings have the same spread (a bigger model may vary more
between seeds). Two-sided, at ALPHA = 0.05. The p-value comes from Student's t distribution through
the regularized incomplete beta function (no SciPy needed): p = I_{df/(df+t^2)}(df/2, 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05
TEST_NAME = f"Welch's t-test, two-sided, p < {ALPHA:g}"


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    se: float  # standard error of the mean


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean, sample std and standard error of the values (None for none)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return Summary(n, mean, std, std / math.sqrt(n))


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def welch(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Welch's t-test of mean(a) != mean(b); None when either side has fewer than two values."""
    sa, sb = summarize(a), summarize(b)
    if sa is None or sb is None or sa.n < 2 or sb.n < 2:
        return None
    diff = sa.mean - sb.mean
    va, vb = sa.se**2, sb.se**2
    if va + vb == 0:  # no spread at all: any difference is exact
        return Welch(diff, math.inf if diff else 0.0, sa.n + sb.n - 2.0, 0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))  # Welch-Satterthwaite
    return Welch(diff, t, df, t_two_sided_p(t, df))


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (Numerical Recipes' continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, eps: float = 1e-14, tiny: float = 1e-300) -> float:
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h
