"""Pure tests of settings parsing and the error model."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.rpc import error_details_pb2

from mesh.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Validator,
    to_status_proto,
)
from mesh.interceptors import LogThrottle
from mesh.settings import Settings


def test_settings_read_the_environment_once_into_frozen_values() -> None:
    settings = Settings.from_env(
        "location",
        env={
            "DELIVERY_LOCATION_LISTEN": "127.0.0.1:6000",
            "DELIVERY_GRACE_S": "3.5",
            "DELIVERY_REDIS_URL": "redis+cluster://127.0.0.1:7000",
            "DELIVERY_KEEPALIVE_TIME_S": "30",
        },
    )
    assert settings.server.listen == "127.0.0.1:6000"
    assert settings.server.grace_s == 3.5
    assert settings.stores.redis_url == "redis+cluster://127.0.0.1:7000"
    options = dict(settings.server.server_options())
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.grace_s = 1  # type: ignore[misc]


def test_settings_default_to_the_service_port() -> None:
    assert Settings.from_env("order", env={}).server.listen == "0.0.0.0:50051"
    assert Settings.from_env("tracking", env={}).server.listen == "0.0.0.0:50054"


def test_a_malformed_number_fails_at_startup_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="DELIVERY_GRACE_S"):
        Settings.from_env("order", env={"DELIVERY_GRACE_S": "soon"})


def test_validation_errors_carry_every_field_violation() -> None:
    v = Validator()
    v.check(False, "email", "must be an email address")
    v.check(True, "name", "never reported")
    v.add("items[0].quantity", "must be positive")
    with pytest.raises(InvalidArgument) as caught:
        v.raise_if_any()
    status = to_status_proto(caught.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "INVALID_ARGUMENT"
    assert status.details[1].Unpack(bad_request)
    assert [f.field for f in bad_request.field_violations] == ["email", "items[0].quantity"]


def test_domain_errors_map_to_error_info_with_their_reason() -> None:
    error = FailedPrecondition(
        "cannot pick up", reason="ILLEGAL_TRANSITION", metadata={"from": "pending"}
    )
    status = to_status_proto(error)
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "ILLEGAL_TRANSITION",
        "delivery.mesh",
        {"from": "pending"},
    )
    assert len(status.details) == 1


def test_a_single_violation_is_accepted_too() -> None:
    error = InvalidArgument(FieldViolation("tip", "must not be negative"))
    assert "tip: must not be negative" in error.message


def test_the_log_throttle_lets_one_line_per_key_through_each_interval_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval_s=10.0)
    assert throttle.admit("redis.TimeoutError", 100.0) == 0
    assert throttle.admit("redis.TimeoutError", 101.0) is None
    assert throttle.admit("redis.TimeoutError", 109.9) is None
    # Another kind of failure has its own line.
    assert throttle.admit("asyncpg.InterfaceError", 105.0) == 0
    # The next line after the interval says how many were held back.
    assert throttle.admit("redis.TimeoutError", 110.0) == 2
    assert throttle.admit("redis.TimeoutError", 120.5) == 0
