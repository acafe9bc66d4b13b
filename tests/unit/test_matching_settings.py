"""matching_svc's tunables from the environment."""

from __future__ import annotations

import pytest

from matching_svc.dispatcher import DispatchRules
from matching_svc.settings import MatchingSettings


def test_defaults_are_the_seeds() -> None:
    settings = MatchingSettings.from_env({})
    assert settings.rules == DispatchRules()
    assert (settings.rules.offer_ttl_s, settings.rules.max_attempts) == (30.0, 5)
    assert (settings.breaker.failure_ratio, settings.breaker.min_calls) == (0.5, 3)
    assert settings.breaker.open_s == 30.0


def test_values_are_read() -> None:
    settings = MatchingSettings.from_env(
        {
            "DELIVERY_OFFER_TTL_S": "2.5",
            "DELIVERY_DISPATCH_MAX_ATTEMPTS": "3",
            "DELIVERY_DISPATCH_RETRY_AFTER_S": "60",
            "DELIVERY_BREAKER_OPEN_S": "5",
            "DELIVERY_DISPATCH_TICK_S": "0.05",
            "DELIVERY_DISPATCH_STACKING": "false",
            "DELIVERY_STACK_MAX_DETOUR_MIN": "4",
            "DELIVERY_STACK_MAX_DELAY_MIN": "2.5",
            "DELIVERY_STACK_MAX_PICKUP_M": "800",
            "DELIVERY_COURIER_SPEED_MPS": "4",
        }
    )
    stacking = settings.rules.stacking
    assert not stacking.enabled
    assert (stacking.max_detour_s, stacking.max_delay_s) == (240.0, 150.0)
    assert (stacking.max_pickup_m, stacking.speed_mps) == (800.0, 4.0)
    assert (settings.rules.offer_ttl_s, settings.rules.max_attempts) == (2.5, 3)
    assert settings.rules.retry_after_s == 60.0
    assert (settings.breaker.open_s, settings.tick_s) == (5.0, 0.05)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DELIVERY_OFFER_TTL_S", "0"),
        ("DELIVERY_OFFER_TTL_S", "soon"),
        ("DELIVERY_DISPATCH_MAX_ATTEMPTS", "0"),
        ("DELIVERY_BREAKER_OPEN_S", "-1"),
        ("DELIVERY_STACK_MAX_DETOUR_MIN", "-3"),
        ("DELIVERY_COURIER_SPEED_MPS", "0"),
    ],
)
def test_bad_values_stop_the_service_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        MatchingSettings.from_env({name: value})
