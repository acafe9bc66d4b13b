"""Pure tests of the store timeouts: their settings and which Redis commands block by design."""

from __future__ import annotations

import math

import pytest

from mesh.settings import StoreSettings
from mesh.stores import block_seconds


def test_store_timeouts_are_read_from_the_environment() -> None:
    settings = StoreSettings.from_env(
        {
            "DELIVERY_DB_CONNECT_TIMEOUT_S": "1.5",
            "DELIVERY_DB_COMMAND_TIMEOUT_S": "7",
            "DELIVERY_DB_ACQUIRE_TIMEOUT_S": "3",
            "DELIVERY_REDIS_CONNECT_TIMEOUT_S": "0.5",
            "DELIVERY_REDIS_TIMEOUT_S": "4",
            "DELIVERY_REDIS_POOL_WAIT_S": "6",
            "DELIVERY_STORE_PROBE_EVERY_S": "0.25",
            "DELIVERY_STORE_PROBE_TIMEOUT_S": "0.75",
        }
    )
    assert (
        settings.db_connect_timeout_s,
        settings.db_command_timeout_s,
        settings.db_acquire_timeout_s,
        settings.redis_connect_timeout_s,
        settings.redis_timeout_s,
        settings.redis_pool_wait_s,
        settings.probe_every_s,
        settings.probe_timeout_s,
    ) == (1.5, 7.0, 3.0, 0.5, 4.0, 6.0, 0.25, 0.75)


def test_every_store_call_is_bounded_by_default() -> None:
    settings = StoreSettings.from_env({})
    assert settings.db_command_timeout_s > 0 and settings.redis_timeout_s > 0
    assert settings.db_acquire_timeout_s > 0 and settings.redis_pool_wait_s > 0


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_store_timeout_that_is_not_a_positive_number_fails_at_startup(value: str) -> None:
    with pytest.raises(ValueError, match="DELIVERY_REDIS_TIMEOUT_S"):
        StoreSettings.from_env({"DELIVERY_REDIS_TIMEOUT_S": value})


@pytest.mark.parametrize(
    ("command", "seconds"),
    [
        (("XREADGROUP", "GROUP", "g", "c", "COUNT", 100, "BLOCK", 1500, "STREAMS", "s", ">"), 1.5),
        ((b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"), math.inf),
        (("XREADGROUP", "GROUP", "g", "c", "STREAMS", "BLOCK", ">"), None),
        (("XREAD", "COUNT", 1, "STREAMS", "s", "0"), None),
        (("BLPOP", "a", "b", 2), 2.0),
        (("BRPOP", "a", 0), math.inf),
        (("BZMPOP", "0.5", 1, "z", "MIN"), 0.5),
        (("WAIT", 1, 250), 0.25),
        (("GET", "BLOCK"), None),
        (("XREAD BLOCK", 300, "STREAMS", "s", "$"), 0.3),
    ],
)
def test_blocking_commands_are_recognised_with_their_block_time(
    command: tuple[object, ...], seconds: float | None
) -> None:
    assert block_seconds(command) == seconds
