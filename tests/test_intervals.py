"""Wilson intervals for rates and the overlap test the registry ranks with."""

import pytest
from scipy.stats import binomtest

from mobile_vla.evaluation.intervals import intervals_overlap, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3.
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_published_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("successes", "n"), [(0, 1), (1, 1), (3, 10), (10, 10), (17, 20), (500, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_agrees_with_scipy(successes, n, confidence):
    ref = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert wilson_interval(successes, n, confidence) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_stays_in_unit_interval_and_is_not_degenerate_at_the_extremes():
    assert wilson_interval(0, 20) == (0.0, pytest.approx(0.1611, abs=5e-5))
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 1.0  # the normal interval would be (1, 1)


def test_wilson_narrows_with_more_trials():
    small = wilson_interval(8, 10)
    large = wilson_interval(800, 1000)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 5


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "match"),
    [
        (1, 0, 0.95, "n must be >= 1"),
        (5, 4, 0.95, "successes must be in 0..n=4"),
        (-1, 4, 0.95, "successes must be in 0..n=4"),
        (1.5, 4, 0.95, "successes must be an integer"),
        (1, 4, 1.0, "confidence must be in"),
    ],
)
def test_wilson_rejects_bad_input(successes, n, confidence, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(successes, n, confidence)


def test_intervals_overlap():
    assert intervals_overlap((0.1, 0.5), (0.4, 0.9))
    assert intervals_overlap([0.4, 0.9], [0.1, 0.5])  # symmetric, accepts JSON lists
    assert intervals_overlap((0.1, 0.5), (0.5, 0.9))  # touching counts
    assert intervals_overlap((0.1, 0.9), (0.3, 0.4))  # containment
    assert not intervals_overlap((0.1, 0.3), (0.31, 0.9))
    assert not intervals_overlap((0.6, 0.9), (0.1, 0.3))


def test_intervals_overlap_rejects_malformed_intervals():
    with pytest.raises(ValueError, match="low <= high"):
        intervals_overlap((0.5, 0.1), (0.0, 1.0))
    with pytest.raises(ValueError, match="interval b must be a pair"):
        intervals_overlap((0.1, 0.5), (0.1, 0.2, 0.3))
