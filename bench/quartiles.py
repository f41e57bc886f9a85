"""Quartiles and the interquartile range, once (a library; numpy-free, as the benchmark side is).

Two methods, both named where they are used:

- ``linear`` (the default): numpy's and pandas' default quantile, ``statistics.quantiles(...,
  method="inclusive")``; what history, the report and the residual ratios show.
- ``pytest-benchmark``: ``pytest_benchmark.stats.Stats``' quartiles (method 3 for an odd count,
  method 2 for an even one), so that the IQRs stored in bench records and in pytest-benchmark's
  storage mean what pytest-benchmark means by them.
"""

from __future__ import annotations

import statistics
from typing import Iterable

METHODS = ("linear", "pytest-benchmark")


def quartiles(values: Iterable[float], method: str = "linear") -> tuple[float, float, float]:
    """(Q1, median, Q3) of ``values``; one value is its own quartiles."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("no values to take quartiles of")
    if method not in METHODS:
        raise ValueError(f"quartile method {method!r}: expected one of {', '.join(METHODS)}")
    median = statistics.median(xs)
    if len(xs) == 1:
        return xs[0], median, xs[0]
    if method == "linear":
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return q1, median, q3
    n = len(xs)
    if n % 2 == 0:
        return statistics.median(xs[: n // 2]), median, statistics.median(xs[n // 2:])
    k, r = n // 4, n % 4
    if r == 1:
        return 0.25 * xs[k - 1] + 0.75 * xs[k], median, 0.75 * xs[3 * k] + 0.25 * xs[3 * k + 1]
    return 0.75 * xs[k] + 0.25 * xs[k + 1], median, 0.25 * xs[3 * k + 1] + 0.75 * xs[3 * k + 2]


def iqr(values: Iterable[float], method: str = "linear") -> float:
    q1, _, q3 = quartiles(values, method)
    return q3 - q1
