"""The estimate model: what is left adds up, the band is calibrated from past errors."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tracking_svc.domain.eta import Band, EtaInputs, EtaRules, estimate, residual
from tracking_svc.domain.travel import CrowFlies, Point, great_circle_m

SHOP = Point(60.1680, 24.9410)
DOOR = Point(60.1761, 24.9410)  # 900 m north
NOW = 1_800_000_000.0
RULES = EtaRules()
TRAVEL = CrowFlies()


def _inputs(**changes: object) -> EtaInputs:
    base: dict[str, object] = {
        "now": NOW,
        "status": "preparing",
        "merchant": SHOP,
        "door": DOOR,
        "prep_s": 600.0,
        "confirmed_at": NOW - 60,
        "assigned": True,
    }
    base.update(changes)
    return EtaInputs(**base)  # type: ignore[arg-type]


def test_an_order_waits_for_its_food_and_its_courier() -> None:
    # Food ready in 9 minutes; a courier 5 minutes away waits for it.
    near = estimate(_inputs(courier=Point(60.1650, 24.9410)), TRAVEL, RULES, Band(), 12)
    assert near.pickup == NOW + 540 + RULES.pickup_service_s
    # A courier far away makes the food wait instead.
    far = estimate(_inputs(courier=Point(60.10, 24.9410)), TRAVEL, RULES, Band(), 12)
    assert far.pickup is not None and near.pickup is not None and far.pickup > near.pickup
    ride = TRAVEL.leg(SHOP, DOOR, _inputs().vehicle, 12).seconds
    assert near.delivery == near.pickup + ride + RULES.dropoff_service_s


def test_the_estimate_falls_as_the_courier_nears_the_door() -> None:
    estimates = [
        estimate(
            _inputs(
                status="picked_up", courier=Point(SHOP.lat + f * (DOOR.lat - SHOP.lat), SHOP.lng)
            ),
            TRAVEL,
            RULES,
            Band(),
            12,
        ).delivery
        for f in (0.0, 0.3, 0.6, 0.9)
    ]
    assert estimates == sorted(estimates, reverse=True) and len(set(estimates)) == 4


@given(
    prep=st.floats(60, 3600),
    status=st.sampled_from(["pending", "confirmed", "preparing", "ready_for_pickup", "picked_up"]),
    dlat=st.floats(-0.05, 0.05),
)
@settings(max_examples=200)
def test_the_band_holds_the_estimate_and_nothing_is_in_the_past(
    prep: float, status: str, dlat: float
) -> None:
    e = estimate(
        _inputs(status=status, prep_s=prep, courier=Point(SHOP.lat + dlat, SHOP.lng)),
        TRAVEL,
        RULES,
        Band(),
        12,
    )
    assert NOW <= e.low <= e.delivery <= e.high
    if e.pickup is not None:
        assert NOW <= e.pickup <= e.delivery


def test_a_calibrated_band_holds_about_80_percent_of_past_errors() -> None:
    rnd = random.Random(7)
    errors = [rnd.gauss(0.05, 0.2) for _ in range(2000)]
    band = Band.calibrated(errors)
    inside = sum(band.low <= r <= band.high for r in errors) / len(errors)
    assert 0.78 <= inside <= 0.82
    assert band.samples == 2000
    # Too few samples: the defaults.
    assert Band.calibrated(errors[:10]) == Band(samples=10)


def test_an_error_is_a_share_of_the_time_the_estimate_had_to_run() -> None:
    assert residual(NOW + 1200, NOW + 1500, NOW) == 0.25
    # Very short horizons count as five minutes, so their errors do not blow up.
    assert residual(NOW + 60, NOW + 120, NOW) == 60 / 300


def test_great_circle() -> None:
    assert abs(great_circle_m(SHOP, DOOR) - 900) < 5
