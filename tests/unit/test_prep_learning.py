"""Pure tests of how a merchant learns its preparation time from its orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from order_svc.domain.orders import (
    PREP_OBSERVED_MAX_S,
    PREP_OBSERVED_MIN_S,
    PrepEstimate,
    learn_prep,
    observed_prep_seconds,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
UNLEARNED = PrepEstimate(average_seconds=900, deviation_seconds=0, observations=0)


def test_the_average_moves_a_fifth_of_the_way() -> None:
    once = learn_prep(UNLEARNED, 1400)
    assert once == PrepEstimate(average_seconds=1000, deviation_seconds=500, observations=1)
    twice = learn_prep(once, 1500)
    # 1000 + (1500 - 1000) / 5; the miss was 500, so the spread stays 500.
    assert twice == PrepEstimate(average_seconds=1100, deviation_seconds=500, observations=2)
    thrice = learn_prep(twice, 1100)
    # A perfect prediction narrows the spread by a fifth.
    assert thrice == PrepEstimate(average_seconds=1100, deviation_seconds=400, observations=3)


def test_the_first_miss_is_the_spread() -> None:
    assert learn_prep(UNLEARNED, 600).deviation_seconds == 300
    assert learn_prep(UNLEARNED, 900).deviation_seconds == 0


def test_steps_round_to_whole_seconds() -> None:
    # A fifth of a whole number of seconds is never a half, so only the direction matters.
    assert learn_prep(UNLEARNED, 903).average_seconds == 901  # 900.6
    assert learn_prep(UNLEARNED, 902).average_seconds == 900  # 900.4
    assert learn_prep(UNLEARNED, 897).average_seconds == 899  # 899.4
    learned = PrepEstimate(average_seconds=900, deviation_seconds=10, observations=4)
    assert learn_prep(learned, 903).deviation_seconds == 9  # 10 + (3 - 10) / 5 = 8.6


def test_observations_are_clamped() -> None:
    assert observed_prep_seconds(T0, T0 + timedelta(hours=10)) == PREP_OBSERVED_MAX_S
    assert observed_prep_seconds(T0, T0) == PREP_OBSERVED_MIN_S
    # A clock step backwards counts as the shortest preparation, not a negative one.
    assert observed_prep_seconds(T0, T0 - timedelta(minutes=5)) == PREP_OBSERVED_MIN_S
    # Halves round away from zero, as PostgreSQL rounds numeric.
    assert observed_prep_seconds(T0, T0 + timedelta(seconds=754, microseconds=500_000)) == 755
    assert observed_prep_seconds(T0, T0 + timedelta(seconds=754, microseconds=499_999)) == 754
    assert observed_prep_seconds(T0, T0 + timedelta(days=1, seconds=1)) == PREP_OBSERVED_MAX_S


@given(
    st.integers(PREP_OBSERVED_MIN_S, PREP_OBSERVED_MAX_S),
    st.lists(st.integers(PREP_OBSERVED_MIN_S, PREP_OBSERVED_MAX_S), min_size=1, max_size=40),
)
def test_the_estimate_stays_within_what_was_seen(prior: int, seen: list[int]) -> None:
    estimate = PrepEstimate(average_seconds=prior, deviation_seconds=0, observations=0)
    low, high = prior, prior
    for observed in seen:
        before = estimate
        estimate = learn_prep(estimate, observed)
        low, high = min(low, observed), max(high, observed)
        assert low <= estimate.average_seconds <= high
        # Each step moves toward the observation, never past it.
        assert abs(estimate.average_seconds - observed) <= abs(before.average_seconds - observed)
        assert 0 <= estimate.deviation_seconds <= high - low
    assert estimate.observations == len(seen)


@given(st.integers(PREP_OBSERVED_MIN_S, PREP_OBSERVED_MAX_S))
def test_a_steady_shop_is_learned(actual: int) -> None:
    estimate = UNLEARNED
    for _ in range(60):
        estimate = learn_prep(estimate, actual)
    # Whole seconds stop a fifth-of-the-way step short of 2.5 s: the average settles within
    # 2 s, and the spread within 2 s of that last miss.
    assert abs(estimate.average_seconds - actual) <= 2
    assert estimate.deviation_seconds <= 4
