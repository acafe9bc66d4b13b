"""Candidate scoring for dispatch: which nearby courier gets the offer first, and why.

The seed's four factors and weights (distance 40%, rating 25%, acceptance rate 20%, current
load 15%), each factor in [0, 1], the weighted sum the score. Three things the seed leaves out:

- Distance is measured against the radius the candidates were searched in, not a fixed 5 km,
  so a search widened to 8 km still tells a 1 km courier from a 7 km one.
- A courier's acceptance rate is only believed after enough offers in the sliding window (20
  by default): until then a neutral prior stands in, so one declined offer does not bury a new
  courier and one accepted offer does not crown them. An unrated courier likewise gets the
  prior rating, not the best or the worst.
- A rating maps 1 star to 0 and 5 stars to 1 (the seed's rating / 5 never goes below 0.2,
  which squeezes the factor into less than its weight).
- Equal scores are ordered by distance, then driver id: the same inputs always rank the same.

Every factor is kept with the score, so the offer row can record why a courier was chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreWeights:
    """How much each factor counts; normalised to sum 1, so any non-negative mix works."""

    distance: float = 0.40
    rating: float = 0.25
    acceptance: float = 0.20
    load: float = 0.15

    def __post_init__(self) -> None:
        values = (self.distance, self.rating, self.acceptance, self.load)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError("score weights must be finite and not negative")
        if sum(values) <= 0:
            raise ValueError("at least one score weight must be positive")

    def normalised(self) -> tuple[float, float, float, float]:
        """(distance, rating, acceptance, load), summing to 1."""
        total = self.distance + self.rating + self.acceptance + self.load
        return (
            self.distance / total,
            self.rating / total,
            self.acceptance / total,
            self.load / total,
        )


@dataclass(frozen=True)
class ScoringRules:
    """The weights and the priors."""

    weights: ScoreWeights = field(default_factory=ScoreWeights)
    #: Offers in the window before a courier's own acceptance rate is believed.
    min_offers: int = 20
    #: The acceptance rate assumed until then.
    prior_acceptance: float = 0.75
    #: The rating (1-5) assumed for a courier nobody has rated yet.
    prior_rating: float = 4.5
    #: Active orders at which the load factor reaches 0.
    full_load: int = 3

    def __post_init__(self) -> None:
        if self.min_offers < 1:
            raise ValueError("min_offers must be at least 1")
        if not 0 <= self.prior_acceptance <= 1:
            raise ValueError("prior_acceptance must be in [0, 1]")
        if not 1 <= self.prior_rating <= 5:
            raise ValueError("prior_rating must be in [1, 5]")
        if self.full_load < 1:
            raise ValueError("full_load must be at least 1")


@dataclass(frozen=True, slots=True)
class Candidate:
    """What scoring needs to know about one courier found near the pickup."""

    driver_id: str
    #: Straight-line distance to the pickup, in metres.
    distance_m: float
    #: Average rating 1-5, or ``None`` if unrated.
    rating: float | None
    #: Offers made to the courier in the sliding window, and how many they accepted.
    offers_in_window: int
    accepted_in_window: int
    #: Orders the courier is carrying now.
    active_orders: int


@dataclass(frozen=True, slots=True)
class Score:
    """A candidate's score and the factors it came from (each in [0, 1])."""

    driver_id: str
    total: float
    distance: float
    rating: float
    acceptance: float
    load: float
    #: Whether the acceptance factor is the courier's own rate (else the prior).
    acceptance_trusted: bool
    distance_m: float

    def factors(self) -> dict[str, float | bool]:
        """The factors as recorded with an offer."""
        return {
            "distance": round(self.distance, 4),
            "rating": round(self.rating, 4),
            "acceptance": round(self.acceptance, 4),
            "load": round(self.load, 4),
            "acceptance_trusted": self.acceptance_trusted,
            "distance_m": round(self.distance_m, 1),
        }


def score(candidate: Candidate, radius_m: float, rules: ScoringRules | None = None) -> Score:
    """Scores one candidate found within ``radius_m`` of the pickup."""
    rules = rules or ScoringRules()
    if not radius_m > 0:
        raise ValueError("radius_m must be positive")
    w_distance, w_rating, w_acceptance, w_load = rules.weights.normalised()
    distance = _unit(1.0 - candidate.distance_m / radius_m)
    rating_value = candidate.rating if candidate.rating is not None else rules.prior_rating
    # 1 star is the floor of the scale: it maps to 0, 5 stars to 1.
    rating = _unit((rating_value - 1.0) / 4.0)
    trusted = candidate.offers_in_window >= rules.min_offers
    acceptance = (
        _unit(candidate.accepted_in_window / candidate.offers_in_window)
        if trusted
        else rules.prior_acceptance
    )
    load = _unit(1.0 - candidate.active_orders / rules.full_load)
    total = w_distance * distance + w_rating * rating + w_acceptance * acceptance + w_load * load
    return Score(
        candidate.driver_id,
        total,
        distance,
        rating,
        acceptance,
        load,
        trusted,
        candidate.distance_m,
    )


def rank(
    candidates: Iterable[Candidate], radius_m: float, rules: ScoringRules | None = None
) -> list[Score]:
    """Scores, best first; ties go to the nearer courier, then to the smaller driver id."""
    scores = [score(c, radius_m, rules) for c in candidates]
    scores.sort(key=lambda s: (-s.total, s.distance_m, s.driver_id))
    return scores


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))
