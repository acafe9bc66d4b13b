"""The generic request checks of mesh/validation.py and the bounded refusals of mesh/errors.py."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf import duration_pb2, message_factory, timestamp_pb2
from google.rpc import error_details_pb2
from hypothesis import given
from hypothesis import strategies as st

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2
from delivery.matching.v1 import matching_service_pb2
from delivery.order.v1 import (
    account_service_pb2,
    merchant_service_pb2,
    order_pb2,
    order_service_pb2,
)
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2
from mesh.errors import (
    MAX_DETAIL_CHARS,
    MAX_MESSAGE_CHARS,
    DomainError,
    FieldViolation,
    InvalidArgument,
    Validator,
    to_status_proto,
)
from mesh.geo import NEAR_ZERO_DEG, snap_near_zero
from mesh.validation import (
    InputRules,
    RequestChecker,
    Unparsable,
    ValidationInterceptor,
    bad_utf8_path,
)

CHECK = RequestChecker()
SERVICE_MODULES = (
    account_service_pb2,
    merchant_service_pb2,
    order_service_pb2,
    location_service_pb2,
    matching_service_pb2,
    tracking_service_pb2,
)


def _violations(message: Any, *, finite: bool = True, checker: RequestChecker = CHECK) -> list:
    return [(v.field, v.description) for v in checker.check(message, finite=finite).violations]


def _order(**fields: Any) -> order_service_pb2.CreateOrderRequest:
    return order_service_pb2.CreateOrderRequest(
        request_id="r-1",
        merchant_id="m-1",
        items=[
            order_pb2.OrderItemInput(menu_item_id="i-1", quantity=1, note="no onions"),
            order_pb2.OrderItemInput(
                menu_item_id="i-2",
                quantity=2,
                options=[order_pb2.OptionChoice(option_group_id="g", option_id="o")],
            ),
        ],
        delivery_address="2 Side St\n3rd floor",
        delivery_location=common_pb2.LatLng(latitude=48.85, longitude=2.35),
        note="ring\ttwice",
        **fields,
    )


def test_every_public_request_type_passes_empty_and_a_real_order_passes() -> None:
    count = 0
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request = message_factory.GetMessageClass(method.input_type)()
                assert _violations(request) == [], method.full_name
                count += 1
    assert count > 40
    assert _violations(_order()) == []


def test_text_refuses_nul_and_control_characters_but_not_tab_newline_or_unicode() -> None:
    request = _order()
    request.items[1].note = "a\x00b"
    request.note = "\x1b[31mred"
    request.delivery_address = "caf\u00e9 \U0001f355 line\r\nnext\tcol"
    assert _violations(request) == [
        ("items[1].note", "must not contain NUL characters"),
        ("note", "must not contain control characters (U+001B at 0)"),
    ]
    for char in ("\x7f", "\x85", "\x08"):
        assert _violations(order_service_pb2.GetOrderRequest(order_id=f"x{char}")) == [
            (
                "order_id",
                f"must not contain control characters (U+{ord(char):04X} at 1)",
            )
        ]


def test_text_length_has_a_default_and_overrides_in_one_table() -> None:
    assert _violations(order_service_pb2.GetOrderRequest(order_id="x" * 4096)) == []
    assert _violations(order_service_pb2.GetOrderRequest(order_id="x" * 5000)) == [
        ("order_id", "must be at most 4096 characters long (got 5000)")
    ]
    # The proof-of-delivery photo is bounded by order_svc and the message size, not here.
    photo = order_service_pb2.CompleteDeliveryRequest(
        proof_of_delivery=order_pb2.ProofOfDelivery(photo=b"\0" * (5 * 1024 * 1024))
    )
    assert _violations(photo) == []
    checker = RequestChecker(
        InputRules(
            max_text_chars=5,
            max_bytes=2,
            length_overrides={"delivery.order.v1.CreateOrderRequest.note": 10},
        )
    )
    request = order_service_pb2.CreateOrderRequest(note="x" * 10, delivery_address="x" * 6)
    assert _violations(request, checker=checker) == [
        ("delivery_address", "must be at most 5 characters long (got 6)")
    ]
    photo.proof_of_delivery.photo = b"abc"
    assert _violations(photo, checker=checker) == [
        ("proof_of_delivery.photo", "must be at most 2 bytes long (got 3)")
    ]


def test_floats_must_be_finite_unless_the_method_leaves_them_to_its_service() -> None:
    request = _order()
    request.delivery_location.latitude = math.nan
    request.delivery_location.longitude = -math.inf
    assert _violations(request) == [
        ("delivery_location.latitude", "must be a finite number, not NaN"),
        ("delivery_location.longitude", "must be a finite number, not -infinity"),
    ]
    fix = location_service_pb2.StreamLocationRequest(
        fix=location_pb2.LocationFix(heading_degrees=math.inf, speed_mps=math.nan)
    )
    assert [f for f, _ in _violations(fix)] == ["fix.heading_degrees", "fix.speed_mps"]
    assert _violations(fix, finite=False) == []
    assert "/delivery.location.v1.LocationService/StreamLocation" in (
        InputRules().nonfinite_methods
    )


def test_enum_values_must_be_defined_singular_repeated_or_nested() -> None:
    route = tracking_service_pb2.PlanRouteRequest(
        vehicle_type=common_pb2.VEHICLE_TYPE_CAR,
        stops=[
            tracking_pb2.RouteStop(kind=tracking_pb2.STOP_KIND_PICKUP),
            tracking_pb2.RouteStop(),
        ],
    )
    route.stops[1].kind = 7  # type: ignore[assignment]
    assert _violations(route) == [
        ("stops[1].kind", "7 is not a value of delivery.tracking.v1.StopKind")
    ]
    listing = order_service_pb2.ListOrdersRequest(statuses=[1, 2, -3])  # type: ignore[list-item]
    assert _violations(listing) == [
        ("statuses[2]", "-3 is not a value of delivery.common.v1.OrderStatus")
    ]


def test_repeated_fields_have_a_cap_and_are_not_walked_past_it() -> None:
    ids = order_service_pb2.MarkNotificationsReadRequest(notification_ids=["\x00"] * 1001)
    assert _violations(ids) == [("notification_ids", "must hold at most 1000 entries (got 1001)")]
    checker = RequestChecker(
        InputRules(
            max_items=2,
            items_overrides={"delivery.order.v1.CreateOrderRequest.items": 3},
        )
    )
    request = _order()
    request.items.add(menu_item_id="i-3")
    request.items[0].options.extend([order_pb2.OptionChoice()] * 3)
    assert _violations(request, checker=checker) == [
        ("items[0].options", "must hold at most 2 entries (got 3)")
    ]


def test_timestamps_and_durations_stay_within_their_definitions() -> None:
    fix = location_pb2.LocationFix(
        device_time=timestamp_pb2.Timestamp(seconds=253_402_300_800, nanos=-1)
    )
    assert _violations(location_service_pb2.StreamLocationRequest(fix=fix)) == [
        ("fix.device_time", "must be a time between years 1 and 9999"),
        ("fix.device_time.nanos", "must be between 0 and 999999999"),
    ]
    watch = location_service_pb2.WatchDriverLocationRequest(
        min_interval_duration=duration_pb2.Duration(seconds=-5, nanos=1)
    )
    assert _violations(watch) == [
        ("min_interval_duration", "seconds and nanos must have the same sign")
    ]
    watch.min_interval_duration.seconds = 10**12
    watch.min_interval_duration.nanos = 0
    assert _violations(watch) == [
        ("min_interval_duration", "must be at most 315576000000 seconds either way")
    ]


def test_coordinates_a_hair_from_zero_become_zero_wherever_they_are() -> None:
    route = tracking_service_pb2.PlanRouteRequest(
        start=common_pb2.LatLng(latitude=5e-324, longitude=-1e-200),
        stops=[tracking_pb2.RouteStop(location=common_pb2.LatLng(latitude=1e-9, longitude=-9e-10))],
    )
    assert _violations(route) == []
    assert (route.start.latitude, route.start.longitude) == (0.0, 0.0)
    assert (route.stops[0].location.latitude, route.stops[0].location.longitude) == (1e-9, 0.0)


def test_a_string_that_is_not_utf8_is_found_in_the_wire_format() -> None:
    request = _order()
    request.items[1].options[0].option_id = "MARKER"
    body = request.SerializeToString().replace(b"MARKER", b"\xed\xa0\x80KER")  # a surrogate
    with pytest.raises(Exception):  # noqa: B017 - whatever protobuf's parser raises
        order_service_pb2.CreateOrderRequest.FromString(body)
    descriptor = order_service_pb2.CreateOrderRequest.DESCRIPTOR
    assert bad_utf8_path(descriptor, body) == "items[1].options[0].option_id"
    assert Unparsable(descriptor, body).violation() == FieldViolation(
        "items[1].options[0].option_id", "is not valid UTF-8"
    )
    truncated = b"\x0a\x7fabc"
    assert bad_utf8_path(descriptor, truncated) is None
    assert Unparsable(descriptor, truncated).violation() == FieldViolation(
        "", "the body is not a valid delivery.order.v1.CreateOrderRequest"
    )


def test_a_refusal_stays_small_however_many_fields_are_bad() -> None:
    v = Validator()
    for i in range(200_000):
        v.add(f"notification_ids[{i}]", "is not a notification id " + "x" * 1000)
    assert len(v.violations) == 20 and v.omitted == 199_980
    with pytest.raises(InvalidArgument) as caught:
        v.raise_if_any()
    error = caught.value
    assert len(error.violations) == 21
    assert error.violations[-1] == FieldViolation("", "and 199980 more violations, not listed")
    assert all(len(x.description) <= MAX_DETAIL_CHARS for x in error.violations)
    assert len(error.message) <= MAX_MESSAGE_CHARS
    status = to_status_proto(error)
    assert len(status.SerializeToString()) < 8 * 1024
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert len(bad.field_violations) == 21
    assert len(InvalidArgument([FieldViolation("f", "d")] * 25).violations) == 21
    huge = DomainError("x" * 10**6, metadata={"id": "y" * 10**6})
    assert len(huge.message) <= MAX_MESSAGE_CHARS
    assert len(huge.metadata["id"]) <= MAX_DETAIL_CHARS


# --- the interceptor, driven without a server -------------------------------------------------


class _CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def _wrapped(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    interceptor = ValidationInterceptor()

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return handler

    details = _CallDetails(method, ())
    first = await interceptor.intercept_service(continuation, details)
    assert await interceptor.intercept_service(continuation, details) is first
    return first


async def test_the_interceptor_turns_an_unparsable_body_into_invalid_argument() -> None:
    seen: list[Any] = []

    async def get_order(request: Any, context: Any) -> Any:
        seen.append(request)
        return order_service_pb2.GetOrderResponse()

    handler = await _wrapped(
        grpc.unary_unary_rpc_method_handler(
            get_order, request_deserializer=order_service_pb2.GetOrderRequest.FromString
        ),
        "/delivery.order.v1.OrderService/GetOrder",
    )
    bad = handler.request_deserializer(b"\x0a\x02\xff\xfe")
    assert isinstance(bad, Unparsable)
    with pytest.raises(InvalidArgument) as caught:
        await handler.unary_unary(bad, None)
    assert caught.value.violations == [FieldViolation("order_id", "is not valid UTF-8")]
    assert caught.value.reason == "MALFORMED_REQUEST"
    good = handler.request_deserializer(b"\x0a\x02ok")
    await handler.unary_unary(good, None)
    assert seen == [good]


async def test_a_client_stream_ends_at_its_first_bad_message() -> None:
    async def follow(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield location_service_pb2.FollowDriversResponse(
                unknown_driver_ids=request.follow_driver_ids
            )

    handler = await _wrapped(
        grpc.stream_stream_rpc_method_handler(
            follow, request_deserializer=location_service_pb2.FollowDriversRequest.FromString
        ),
        "/delivery.location.v1.LocationService/FollowDrivers",
    )

    async def requests() -> AsyncIterator[Any]:
        yield location_service_pb2.FollowDriversRequest(follow_driver_ids=["a"])
        yield location_service_pb2.FollowDriversRequest(follow_driver_ids=["b", "c\x00"])
        yield location_service_pb2.FollowDriversRequest(follow_driver_ids=["never"])

    answered = []
    with pytest.raises(InvalidArgument) as caught:
        async for response in handler.stream_stream(requests(), None):
            answered.extend(response.unknown_driver_ids)
    assert answered == ["a"]
    assert caught.value.violations == [
        FieldViolation("follow_driver_ids[1]", "must not contain NUL characters")
    ]


# --- why coordinates are snapped: PostgreSQL's float8 underflow -------------------------------


class Underflow(ArithmeticError):
    pass


def _mul(a: float, b: float) -> float:
    result = a * b
    if result == 0.0 and a != 0.0 and b != 0.0:
        raise Underflow
    return result


def _div(a: float, b: float) -> float:
    result = a / b
    if result == 0.0 and a != 0.0:
        raise Underflow
    return result


def _square(a: float) -> float:
    result = a**2
    if result == 0.0 and a != 0.0:
        raise Underflow
    return result


def _pg_distance(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """order_svc's merchant distance SQL as PostgreSQL evaluates it: float8 multiplication,
    division and power() raise on an underflow (a nonzero operand, a zero result)."""
    rad = math.pi / 180

    def radians(x: float) -> float:
        return _mul(x, rad)

    a = _square(math.sin(_div(radians(lat1 - lat2), 2))) + _mul(
        _mul(math.cos(radians(lat2)), math.cos(radians(lat1))),
        _square(math.sin(_div(radians(lng1 - lng2), 2))),
    )
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


def test_coordinates_a_hair_from_zero_underflow_postgresql_unsnapped() -> None:
    for lat in (5e-324, 1e-310, 1e-200, -1e-170):
        with pytest.raises(Underflow):
            _pg_distance(lat, 0.0, 0.0, 0.0)
        assert _pg_distance(snap_near_zero(lat), 0.0, 0.0, 0.0) == 0.0


_tiny = st.floats(min_value=-NEAR_ZERO_DEG * 10, max_value=NEAR_ZERO_DEG * 10)
_lat = st.one_of(_tiny, st.floats(min_value=-90, max_value=90))
_lng = st.one_of(_tiny, st.floats(min_value=-180, max_value=180))


@given(_lat, _lng, _lat, _lng)
def test_snapped_coordinates_never_underflow_the_distance_sql(
    lat1: float, lng1: float, lat2: float, lng2: float
) -> None:
    snapped = [snap_near_zero(x) for x in (lat1, lng1, lat2, lng2)]
    assert all(x == 0.0 or abs(x) >= NEAR_ZERO_DEG for x in snapped)
    assert _pg_distance(*snapped) >= 0.0
