"""Dispatch scoring: the seed's factors and weights, priors for new couriers, stable ranking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matching_svc.domain.scoring import Candidate, ScoreWeights, ScoringRules, rank, score

RADIUS = 5000.0


def _c(
    driver_id: str,
    distance_m: float,
    rating: float | None = 4.8,
    offers: int = 40,
    accepted: int = 36,
    active: int = 0,
) -> Candidate:
    return Candidate(driver_id, distance_m, rating, offers, accepted, active)


def test_the_seed_weights_on_one_courier() -> None:
    s = score(_c("a", 1000, rating=5.0, offers=20, accepted=15, active=1), RADIUS)
    assert s.distance == pytest.approx(0.8)
    assert s.rating == pytest.approx(1.0)
    assert s.acceptance == pytest.approx(0.75) and s.acceptance_trusted
    assert s.load == pytest.approx(2 / 3)
    assert s.total == pytest.approx(0.4 * 0.8 + 0.25 * 1.0 + 0.2 * 0.75 + 0.15 * 2 / 3)


def test_ranking_a_fixed_set() -> None:
    drivers = [
        _c("far-excellent", 4500, rating=5.0, offers=50, accepted=50),
        _c("near-average", 500, rating=4.2, offers=50, accepted=35),
        _c("near-busy", 400, rating=4.8, offers=50, accepted=45, active=2),
        _c("mid-good", 1500, rating=4.9, offers=50, accepted=48),
    ]
    order = [s.driver_id for s in rank(drivers, RADIUS)]
    assert order == ["mid-good", "near-average", "near-busy", "far-excellent"]


def test_weights_change_the_order() -> None:
    near_poor = _c("near-poor", 300, rating=3.0, offers=50, accepted=20)
    far_great = _c("far-great", 3000, rating=5.0, offers=50, accepted=50)
    assert rank([near_poor, far_great], RADIUS)[0].driver_id == "far-great"
    distance_only = ScoringRules(weights=ScoreWeights(1, 0, 0, 0))
    assert rank([near_poor, far_great], RADIUS, distance_only)[0].driver_id == "near-poor"


def test_a_new_courier_gets_the_prior_until_enough_offers() -> None:
    rules = ScoringRules(min_offers=20, prior_acceptance=0.75)
    one_decline = score(_c("new", 1000, offers=1, accepted=0), RADIUS, rules)
    one_accept = score(_c("new", 1000, offers=1, accepted=1), RADIUS, rules)
    assert one_decline.acceptance == one_accept.acceptance == 0.75
    assert not one_decline.acceptance_trusted
    settled = score(_c("old", 1000, offers=20, accepted=10), RADIUS, rules)
    assert settled.acceptance == pytest.approx(0.5) and settled.acceptance_trusted


def test_an_unrated_courier_gets_the_prior_rating() -> None:
    rules = ScoringRules(prior_rating=4.5)
    assert score(_c("x", 100, rating=None), RADIUS, rules).rating == pytest.approx(0.875)


def test_distance_is_relative_to_the_searched_radius() -> None:
    # Widened to 8 km, a 6 km courier still scores above a 7 km one (the seed's fixed 5 km
    # would give both 0).
    assert score(_c("a", 6000), 8000).distance > score(_c("b", 7000), 8000).distance > 0


def test_ties_go_to_the_nearer_then_the_smaller_id() -> None:
    same = dict(rating=4.8, offers=40, accepted=36)
    # Identical scores need identical factors: a weightless distance makes them equal.
    rules = ScoringRules(weights=ScoreWeights(0, 1, 1, 1))
    order = rank([_c("b", 900, **same), _c("c", 100, **same), _c("a", 900, **same)], RADIUS, rules)
    assert [s.driver_id for s in order] == ["c", "a", "b"]


def test_factors_are_recorded() -> None:
    factors = score(_c("a", 1234.56, offers=3, accepted=3), RADIUS).factors()
    assert factors["acceptance_trusted"] is False
    assert factors["distance_m"] == 1234.6
    assert set(factors) == {
        "distance",
        "rating",
        "acceptance",
        "load",
        "acceptance_trusted",
        "distance_m",
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: ScoreWeights(-0.1, 0.5, 0.3, 0.3),
        lambda: ScoreWeights(0, 0, 0, 0),
        lambda: ScoreWeights(float("nan"), 1, 1, 1),
        lambda: ScoringRules(min_offers=0),
        lambda: ScoringRules(prior_acceptance=1.5),
        lambda: ScoringRules(prior_rating=0.5),
        lambda: ScoringRules(full_load=0),
    ],
)
def test_bad_rules_are_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make()


_candidates = st.builds(
    Candidate,
    driver_id=st.text(min_size=1, max_size=8),
    distance_m=st.floats(0, 20_000),
    rating=st.one_of(st.none(), st.floats(1, 5)),
    offers_in_window=st.integers(0, 200),
    accepted_in_window=st.integers(0, 200),
    active_orders=st.integers(0, 10),
).filter(lambda c: c.accepted_in_window <= c.offers_in_window)


@given(_candidates, st.floats(100, 20_000), st.floats(0, 5_000))
def test_total_is_a_unit_score_and_nearer_never_scores_lower(
    candidate: Candidate, radius: float, closer_by: float
) -> None:
    s = score(candidate, radius)
    assert 0.0 <= s.total <= 1.0
    nearer = Candidate(
        candidate.driver_id,
        max(0.0, candidate.distance_m - closer_by),
        candidate.rating,
        candidate.offers_in_window,
        candidate.accepted_in_window,
        candidate.active_orders,
    )
    assert score(nearer, radius).total >= s.total
