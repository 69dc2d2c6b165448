"""Statistics over repetitions: means with confidence intervals, and pairwise differences with a
test, stated as sentences a paper can quote.

Student's t for a mean and Welch's t for a difference (unequal variances, Welch-Satterthwaite
degrees of freedom), from scipy: with three to ten repetitions per configuration, the t family is
the standard, and its coverage is tested against known distributions in tests/test_stats.py.
Loss cannot be negative, so interval ends below zero are reported as zero (``clip_low``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sst

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval over ``n`` repetitions (``lo``/``hi`` None when n < 2)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    sd: float | None

    def text(self, unit: str = "", digits: int = 2) -> str:
        if self.lo is None or self.hi is None:
            return f"{self.mean:.{digits}f}{unit} (n = {self.n}, no interval)"
        return f"{self.mean:.{digits}f}{unit} (95 % CI {self.lo:.{digits}f} to {self.hi:.{digits}f}, n = {self.n})"


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its interval and Welch's test."""

    diff: float
    lo: float | None
    hi: float | None
    p: float | None
    n_a: int
    n_b: int
    test: str = "Welch t-test"


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE, clip_low: float | None = None,
            clip_high: float | None = None) -> Estimate:
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, None, None, 0, None)
    m = float(x.mean())
    if n < 2:
        return Estimate(m, None, None, 1, None)
    sd = float(x.std(ddof=1))
    half = float(sst.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    lo, hi = m - half, m + half
    if clip_low is not None:
        lo = max(lo, clip_low)
    if clip_high is not None:  # a percentage of messages: never above 100
        hi = min(hi, clip_high)
    return Estimate(m, lo, hi, n, sd)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    d = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Difference(d, None, None, None, len(x), len(y))
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:  # both constant: the same value every time (e.g. no loss at all) or two fixed values
        return Difference(d, d, d, 1.0 if d == 0 else 0.0, len(x), len(y))
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = float(sst.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * sst.t.sf(abs(d) / se, df))  # what scipy.stats.ttest_ind(equal_var=False) returns
    return Difference(d, d - half, d + half, p, len(x), len(y))


def compare_sentence(name_a: str, name_b: str, metric: str, unit: str, a: Sequence[float], b: Sequence[float],
                     more: str = "more", less: str = "less", digits: int = 2, level_unit: str | None = None,
                     p_adjusted: float | None = None, adjustment: str = "", no_verdict: str = "") -> str:
    """One plain sentence: which one is higher, by how much, with the interval, the test and n.
    ``unit`` is the difference's (loss differs in percentage points), ``level_unit`` a value's.
    ``p_adjusted`` (with ``adjustment`` naming how) replaces the test's own p in the verdict, when
    the test is one of a family; ``no_verdict`` says why a difference gets no verdict at all
    (a confounded metric): the interval is shown, the significance is not."""
    dif = welch(a, b)
    note = ""
    if p_adjusted is not None and dif.p is not None:
        dif = Difference(dif.diff, dif.lo, dif.hi, p_adjusted, dif.n_a, dif.n_b, dif.test)
        note = f" ({adjustment})"
    n = f"n = {dif.n_a} and {dif.n_b}"
    if dif.n_a == 0 or dif.n_b == 0:
        return f"{name_a} vs {name_b}: no complete runs to compare ({n})."
    if dif.lo is None:
        return f"{name_a} had {metric} {abs(dif.diff):.{digits}f}{unit} {more if dif.diff > 0 else less} than {name_b} ({n}: too few runs for an interval or a test)."
    if dif.diff == 0 and dif.lo == dif.hi:
        return f"{name_a} and {name_b} had the same {metric} in every run ({np.mean(a):.{digits}f}{unit if level_unit is None else level_unit}; {n})."
    ci = f"95 % CI of the difference {dif.lo:.{digits}f} to {dif.hi:.{digits}f}{unit}; {dif.test} {_p(dif.p)}{note}"
    if round(abs(dif.diff), digits) == 0:
        return f"{name_a} and {name_b} had the same mean {metric}, {np.mean(a):.{digits}f}{unit if level_unit is None else level_unit} ({ci}; {n})."
    direction = more if dif.diff > 0 else less
    if no_verdict:
        return (f"{name_a} had {abs(dif.diff):.{digits}f}{unit} {direction} {metric} than {name_b} "
                f"(95 % CI of the difference {dif.lo:.{digits}f} to {dif.hi:.{digits}f}{unit}; {n}); no significance verdict: {no_verdict}.")
    sig = dif.p is not None and dif.p < 1 - CONFIDENCE
    verdict = "a significant difference" if sig else "not a significant difference"
    return (f"{name_a} had {abs(dif.diff):.{digits}f}{unit} {direction} {metric} than {name_b} "
            f"(95 % CI of the difference {dif.lo:.{digits}f} to {dif.hi:.{digits}f}{unit}; {dif.test} {_p(dif.p)}{note}, {verdict} at 5 %; {n}).")


def _p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None, and is not counted).

    A campaign makes one test per pair of configurations and metric; at 5 % each, some of many
    would come out "significant" by chance alone. Holm keeps the chance of any false verdict in
    the family at 5 % without assuming the tests independent, and is never less powerful than
    Bonferroni. scipy has no Holm, and statsmodels is not a dependency for these few lines.
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))  # monotone: never below an earlier adjusted p
        out[i] = running
    return out
