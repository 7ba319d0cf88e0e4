"""Means, Student-t intervals and paired differences, against closed forms and table values."""
from __future__ import annotations

import math

import pytest

from sweep_service.report.stats import NO_SPREAD, NOISE, estimate, paired_difference, t_quantile, verdict


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_the_closed_forms_for_one_two_and_four_degrees_of_freedom(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    alpha = 4 * p * (1 - p)
    four = 2 * math.sqrt(math.cos(math.acos(math.sqrt(alpha)) / 3) / math.sqrt(alpha) - 1)
    assert t_quantile(p, 4) == pytest.approx(four, rel=1e-9)


@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045),
                                       (1000, 1.962)])
def test_t_quantile_matches_the_printed_table_at_97_5_percent(df, table):
    assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="at least one degree of freedom"):
        t_quantile(0.975, 0)


def test_one_value_has_a_mean_and_no_interval():
    one = estimate([0.91])
    assert one.mean == 0.91 and one.n == 1
    assert not one.measured and one.half_width is None and one.low is None and one.high is None
    assert one.contains(0.91) is None
    assert estimate([]) is None


def test_interval_is_mean_plus_minus_t_times_the_standard_error():
    e = estimate([1.0, 2.0, 3.0])  # mean 2, sample sd 1
    assert e.mean == 2.0 and e.sd == pytest.approx(1.0) and e.n == 3
    assert e.half_width == pytest.approx(4.302652729749462 / math.sqrt(3))
    assert (e.low, e.high) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    assert e.contains(-0.5) is False and e.contains(-0.48) is True and e.contains(4.49) is False
    # No spread among the seeds: an interval of width 0, measured (not "no spread measured").
    same = estimate([0.5, 0.5, 0.5])
    assert same.measured and same.half_width == 0.0


def test_paired_difference_uses_only_the_seeds_both_ran_and_cancels_what_they_share():
    # Seed luck moves both pruners alike (0.80, 0.90, 0.70): paired, the difference is a
    # steady +0.01; unpaired, the two intervals would overlap widely.
    a = {0: 0.81, 1: 0.91, 2: 0.71, 3: 0.99}
    b = {0: 0.80, 1: 0.90, 2: 0.70}
    d = paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx(0.01)
    assert d.half_width == pytest.approx(0.0, abs=1e-12)
    assert estimate(a.values()).contains(estimate(b.values()).mean)
    assert paired_difference({0: 0.5}, {1: 0.5}) is None


def test_verdicts():
    assert verdict(estimate([0.020, 0.021, 0.022]), "l1norm", "fpgm") == "l1norm better"
    assert verdict(estimate([-0.020, -0.021, -0.022]), "l1norm", "fpgm") == "fpgm better"
    # The same mean with three times the spread: the interval (±0.025) holds 0.
    assert verdict(estimate([0.01, 0.02, 0.03]), "l1norm", "fpgm") == NOISE
    assert verdict(estimate([0.02, -0.01, 0.004]), "l1norm", "fpgm") == NOISE == "not distinguishable from noise"
    assert verdict(estimate([0.02]), "l1norm", "fpgm") == NO_SPREAD == "one seed: no spread measured"
