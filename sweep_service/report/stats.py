"""Means and 95 % intervals over seeds, and paired differences between pruners.

A configuration (model, pruner, rate) run with n seeds has n values of a figure; its mean
comes with a Student-t interval, mean ± t(0.975, n-1) · s / √n, which holds the true mean
in 95 % of repeated experiments if the seeds' outcomes are roughly normal. With one seed
there is no spread to measure, hence no interval (never a zero-width one).

Two pruners of one model at one rate are compared by their paired difference: for each
seed both ran, the difference of their values. Both started from the same baseline (the
model's baseline of that seed) and saw the same data, so what the seed changes for both
cancels out, and the interval of the mean difference is narrower than the two intervals
side by side suggest. Where it contains 0, the difference is not distinguishable from noise.

Pure: no I/O; the t quantile comes from scipy.special.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

CONFIDENCE = 0.95


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t distribution with `df` degrees of freedom."""
    from scipy.special import stdtrit

    if df < 1:
        raise ValueError(f"Student's t needs at least one degree of freedom, got {df}")
    return float(stdtrit(df, p))


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` seeds and the half-width of its interval (None when n < 2: no
    spread was measured)."""

    mean: float
    n: int
    half_width: float | None = None
    sd: float | None = None

    @property
    def measured(self) -> bool:
        return self.half_width is not None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def contains(self, value: float) -> bool | None:
        """Whether the interval holds `value`; None without an interval."""
        if self.half_width is None:
            return None
        return self.low <= value <= self.high


def estimate(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate | None:
    """Mean and `confidence` interval of `values`; None if there are none."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Estimate(mean, 1)
    sd = statistics.stdev(xs)
    half = t_quantile(0.5 + confidence / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    return Estimate(mean, len(xs), half, sd)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Estimate | None:
    """Mean of a[seed] - b[seed] over the seeds both have, with its interval; None if they
    share no seed."""
    return estimate([a[seed] - b[seed] for seed in sorted(set(a) & set(b))], confidence)


# What the pairwise comparison says of a difference.
NO_SPREAD = "one seed: no spread measured"
NOISE = "not distinguishable from noise"


def verdict(difference: Estimate, first: str, second: str) -> str:
    """`first` better, `second` better, not distinguishable from noise, or no spread."""
    if not difference.measured:
        return NO_SPREAD
    if difference.contains(0.0):
        return NOISE
    return f"{first} better" if difference.mean > 0 else f"{second} better"
