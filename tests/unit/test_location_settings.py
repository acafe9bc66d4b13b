"""location_svc's tunables come from the environment, and bad values stop it at start."""

from __future__ import annotations

import pytest

from location_svc.settings import LocationSettings


def test_defaults_without_variables() -> None:
    settings = LocationSettings.from_env({})
    assert settings.policy.presence_ttl_s == 30.0
    assert settings.policy.rules.max_accuracy_m == 50.0
    assert settings.rules.dwell_s == 20.0
    assert settings.rules.approach_m == 500.0


def test_variables_reach_the_policy_and_the_fences() -> None:
    settings = LocationSettings.from_env(
        {
            "DELIVERY_PRESENCE_TTL_S": "45",
            "DELIVERY_FIX_MAX_ACCURACY_M": "30",
            "DELIVERY_FIX_MAX_SPEED_KMH": "120",
            "DELIVERY_REPORT_BUSY_S": "1.5",
            "DELIVERY_ACK_SPACING_S": "0",
            "DELIVERY_ARRIVAL_RADIUS_M": "60",
            "DELIVERY_ARRIVAL_DWELL_S": "0",
            "DELIVERY_APPROACH_M": "300",
            "DELIVERY_APPROACH_S": "0",
        }
    )
    policy, rules = settings.policy, settings.rules
    assert policy.presence_ttl_s == 45.0
    assert policy.rules.max_accuracy_m == 30.0
    assert policy.rules.max_speed_kmh == 120.0
    assert policy.pacing.busy_s == 1.5
    assert policy.ack_spacing_s == 0.0
    assert rules.merchant_radius_m == rules.customer_radius_m == 60.0
    assert rules.dwell_s == 0.0
    assert rules.approach_m == 300.0
    assert rules.approach_s == 0.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DELIVERY_PRESENCE_TTL_S", "0", "must be positive"),
        ("DELIVERY_ARRIVAL_DWELL_S", "-1", "must not be negative"),
        ("DELIVERY_FIX_MAX_ACCURACY_M", "fifty", "must be a number"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        LocationSettings.from_env({name: value})
    assert name in str(caught.value)
