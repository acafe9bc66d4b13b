"""Bad input over real gRPC, PostgreSQL and Redis, against order, location, matching and tracking
servers: NUL bytes, invalid UTF-8 bodies, NaN, unknown enum values and oversized repeated fields
are each refused with INVALID_ARGUMENT naming the field, write nothing, and log no ERROR line.
Coordinates a hair from 0 (5e-324) no longer reach PostgreSQL's underflow."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2
from delivery.matching.v1 import matching_service_pb2
from delivery.order.v1 import (
    account_service_pb2,
    merchant_pb2,
    merchant_service_pb2,
    order_pb2,
    order_service_pb2,
)
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2
from location_svc.server import build_server as build_location
from matching_svc.server import build_server as build_matching
from mesh.server import MeshServer
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores
from mesh.testing import service_metadata, serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Market
from tracking_svc.server import build_server as build_tracking

ORDER = "delivery.order.v1.OrderService"
ACCOUNTS = "delivery.order.v1.AccountService"
MERCHANTS = "delivery.order.v1.MerchantService"
LOCATION = "delivery.location.v1.LocationService"
MATCHING = "delivery.matching.v1.MatchingService"
TRACKING = "delivery.tracking.v1.TrackingService"

#: Which server answers each service.
SERVER = {
    ORDER: "order",
    ACCOUNTS: "order",
    MERCHANTS: "order",
    LOCATION: "location",
    MATCHING: "matching",
    TRACKING: "tracking",
}

#: The largest refusal we accept on the wire (status message plus details), in bytes.
SMALL_ANSWER = 8 * 1024


@dataclass
class World:
    """Four servers, their channels, signed-in callers and a shop with an order."""

    channels: dict[str, grpc.aio.Channel]
    callers: dict[str, tuple[tuple[str, str], ...]]
    market: Market
    merchant: merchant_pb2.Merchant
    item: merchant_pb2.MenuItem
    order_id: str
    pool: asyncpg.Pool


@pytest.fixture(scope="module")
async def world(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[World]:
    suffix = uuid.uuid4().hex[:8]
    order_settings = settings_for_test("order", store_settings)
    async with (
        serving(build_order, order_settings, stores) as (_, order_ch),
        serving(build_location, settings_for_test("location", store_settings), stores) as (
            location,
            location_ch,
        ),
    ):
        location_addr = f"127.0.0.1:{location.port}"

        async def matching(settings: Settings, stores: Stores) -> MeshServer:
            return await build_matching(
                settings,
                stores,
                location_addr=location_addr,
                group_start_id="$",
                consumer_group=f"matching-{suffix}",
            )

        async def tracking(settings: Settings, stores: Stores) -> MeshServer:
            return await build_tracking(
                settings,
                stores,
                location_addr=location_addr,
                group_start_id="$",
                consumer_group=f"tracking-{suffix}",
            )

        async with (
            serving(matching, settings_for_test("matching", store_settings), stores) as (
                _,
                matching_ch,
            ),
            serving(tracking, settings_for_test("tracking", store_settings), stores) as (
                _,
                tracking_ch,
            ),
        ):
            market = Market(order_ch, stores, order_settings)
            customer = await market.sign_up(common_pb2.ROLE_CUSTOMER)
            owner = await market.sign_up(common_pb2.ROLE_MERCHANT)
            driver = await market.sign_up(common_pb2.ROLE_DRIVER)
            admin = await market.admin()
            merchant, item = await market.shop(owner)
            order = await market.orders.CreateOrder(
                market.order_request(merchant, item), metadata=customer.metadata
            )
            assert stores.pool is not None
            yield World(
                channels={
                    "order": order_ch,
                    "location": location_ch,
                    "matching": matching_ch,
                    "tracking": tracking_ch,
                },
                callers={
                    "anonymous": (),
                    "customer": customer.metadata,
                    "owner": owner.metadata,
                    "driver": driver.metadata,
                    "admin": admin.metadata,
                    "service": service_metadata(order_settings),
                },
                market=market,
                merchant=merchant,
                item=item,
                order_id=order.order.order_id,
                pool=stores.pool,
            )


# --- requests ----------------------------------------------------------------------------------


def _point(lat: float = 48.85, lng: float = 2.35) -> common_pb2.LatLng:
    return common_pb2.LatLng(latitude=lat, longitude=lng)


def _sign_up(w: World) -> Message:
    return account_service_pb2.SignUpRequest(
        email=f"u-{uuid.uuid4().hex[:12]}@example.com",
        password="password123",
        name="Ann",
        role=common_pb2.ROLE_CUSTOMER,
    )


def _login(w: World) -> Message:
    return account_service_pb2.LoginRequest(email="ann@example.com", password="password123")


def _create_merchant(w: World) -> Message:
    return merchant_service_pb2.CreateMerchantRequest(
        request_id=uuid.uuid4().hex,
        name="Bakery",
        address="3 Main St",
        location=_point(),
        delivery_radius_meters=3000,
        average_prep_duration=duration_pb2.Duration(seconds=600),
        currency_code="EUR",
        handoff_policy=merchant_pb2.HANDOFF_POLICY_PIN,
    )


def _upsert_item(w: World) -> Message:
    item = merchant_pb2.MenuItem()
    item.CopyFrom(w.item)
    return merchant_service_pb2.UpsertMenuItemRequest(
        request_id=uuid.uuid4().hex, merchant_id=w.merchant.merchant_id, menu_item=item
    )


def _create_order(w: World) -> Message:
    request = w.market.order_request(w.merchant, w.item)
    request.note = "ring twice"
    request.items[0].note = "extra crispy"
    return request


def _report_problem(w: World) -> Message:
    return order_service_pb2.ReportProblemRequest(
        order_id=w.order_id,
        request_id=uuid.uuid4().hex,
        reason=order_pb2.PROBLEM_REASON_ORDER_LATE,
        description="still waiting",
    )


def _cancel(w: World) -> Message:
    return order_service_pb2.CancelOrderRequest(
        order_id=w.order_id,
        request_id=uuid.uuid4().hex,
        reason=order_pb2.CANCEL_REASON_CUSTOMER_CHANGED_MIND,
        note="changed my mind",
    )


def _rate(w: World) -> Message:
    return order_service_pb2.RateOrderRequest(
        order_id=w.order_id,
        request_id=uuid.uuid4().hex,
        target=order_pb2.RATING_TARGET_DRIVER,
        score=5,
        comment="great",
    )


def _mark_read(w: World) -> Message:
    return order_service_pb2.MarkNotificationsReadRequest(
        request_id=uuid.uuid4().hex, notification_ids=[str(uuid.uuid4())]
    )


def _list_orders(w: World) -> Message:
    return order_service_pb2.ListOrdersRequest(statuses=[common_pb2.ORDER_STATUS_PENDING])


def _list_merchants(w: World) -> Message:
    return merchant_service_pb2.ListMerchantsRequest(location=_point(), radius_meters=1000)


def _get_merchant(w: World) -> Message:
    return merchant_service_pb2.GetMerchantRequest(merchant_id=w.merchant.merchant_id)


def _set_availability(w: World) -> Message:
    return location_service_pb2.SetAvailabilityRequest(
        request_id=uuid.uuid4().hex,
        status=common_pb2.DRIVER_STATUS_AVAILABLE,
        vehicle_type=common_pb2.VEHICLE_TYPE_BICYCLE,
    )


def _find_drivers(w: World) -> Message:
    return location_service_pb2.FindNearbyDriversRequest(
        center=_point(), radius_meters=1000, limit=5, vehicle_type=common_pb2.VEHICLE_TYPE_CAR
    )


def _get_driver(w: World) -> Message:
    return location_service_pb2.GetDriverLocationRequest(driver_id=str(uuid.uuid4()))


def _report_locations(w: World) -> Message:
    fix = location_pb2.LocationFix(
        position=_point(),
        accuracy_meters=5,
        device_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        sequence=1,
    )
    return location_service_pb2.ReportLocationsRequest(request_id=uuid.uuid4().hex, fixes=[fix])


def _accept_offer(w: World) -> Message:
    return matching_service_pb2.AcceptOfferRequest(
        offer_id=str(uuid.uuid4()), request_id=uuid.uuid4().hex
    )


def _get_eta(w: World) -> Message:
    return tracking_service_pb2.GetEtaRequest(order_id=w.order_id)


def _plan_route(w: World) -> Message:
    return tracking_service_pb2.PlanRouteRequest(
        start=_point(),
        vehicle_type=common_pb2.VEHICLE_TYPE_BICYCLE,
        stops=[
            tracking_pb2.RouteStop(
                stop_id="pickup-1",
                order_id=w.order_id,
                kind=tracking_pb2.STOP_KIND_PICKUP,
                location=_point(48.86, 2.35),
            ),
            tracking_pb2.RouteStop(
                stop_id="dropoff-1",
                order_id=w.order_id,
                kind=tracking_pb2.STOP_KIND_DROPOFF,
                location=_point(48.87, 2.35),
            ),
        ],
    )


@dataclass(frozen=True)
class Rpc:
    """A unary method, who calls it, and a request that is fine apart from what a case breaks."""

    service: str
    method: str
    caller: str
    make: Callable[[World], Message]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


LOGIN = Rpc(ACCOUNTS, "Login", "anonymous", _login)
SIGN_UP = Rpc(ACCOUNTS, "SignUp", "anonymous", _sign_up)
CREATE_MERCHANT = Rpc(MERCHANTS, "CreateMerchant", "owner", _create_merchant)
UPSERT_ITEM = Rpc(MERCHANTS, "UpsertMenuItem", "owner", _upsert_item)
LIST_MERCHANTS = Rpc(MERCHANTS, "ListMerchants", "customer", _list_merchants)
GET_MERCHANT = Rpc(MERCHANTS, "GetMerchant", "customer", _get_merchant)
CREATE_ORDER = Rpc(ORDER, "CreateOrder", "customer", _create_order)
REPORT_PROBLEM = Rpc(ORDER, "ReportProblem", "customer", _report_problem)
CANCEL_ORDER = Rpc(ORDER, "CancelOrder", "customer", _cancel)
RATE_ORDER = Rpc(ORDER, "RateOrder", "customer", _rate)
MARK_READ = Rpc(ORDER, "MarkNotificationsRead", "customer", _mark_read)
LIST_ORDERS = Rpc(ORDER, "ListOrders", "customer", _list_orders)
SET_AVAILABILITY = Rpc(LOCATION, "SetAvailability", "driver", _set_availability)
FIND_DRIVERS = Rpc(LOCATION, "FindNearbyDrivers", "service", _find_drivers)
GET_DRIVER = Rpc(LOCATION, "GetDriverLocation", "admin", _get_driver)
REPORT_LOCATIONS = Rpc(LOCATION, "ReportLocations", "driver", _report_locations)
ACCEPT_OFFER = Rpc(MATCHING, "AcceptOffer", "driver", _accept_offer)
GET_ETA = Rpc(TRACKING, "GetEta", "customer", _get_eta)
PLAN_ROUTE = Rpc(TRACKING, "PlanRoute", "driver", _plan_route)

#: Text fields, each sent once with a NUL byte and once as invalid UTF-8.
TEXT_CASES = [
    (LOGIN, "email"),
    (LOGIN, "password"),
    (SIGN_UP, "name"),
    (SIGN_UP, "email"),
    (CREATE_MERCHANT, "address"),
    (CREATE_MERCHANT, "name"),
    (UPSERT_ITEM, "menu_item.option_groups[1].options[0].name"),
    (UPSERT_ITEM, "menu_item.name"),
    (GET_MERCHANT, "merchant_id"),
    (CREATE_ORDER, "note"),
    (CREATE_ORDER, "items[0].note"),
    (CREATE_ORDER, "delivery_address"),
    (CREATE_ORDER, "request_id"),
    (REPORT_PROBLEM, "description"),
    (CANCEL_ORDER, "note"),
    (RATE_ORDER, "comment"),
    (MARK_READ, "notification_ids[0]"),
    (SET_AVAILABILITY, "request_id"),
    (GET_DRIVER, "driver_id"),
    (REPORT_LOCATIONS, "request_id"),
    (ACCEPT_OFFER, "offer_id"),
    (GET_ETA, "order_id"),
    (PLAN_ROUTE, "stops[1].stop_id"),
]

#: Double fields that must be finite.
NUMBER_CASES = [
    (CREATE_ORDER, "delivery_location.latitude", float("nan")),
    (CREATE_MERCHANT, "location.longitude", float("inf")),
    (LIST_MERCHANTS, "radius_meters", float("nan")),
    (LIST_MERCHANTS, "location.latitude", float("-inf")),
    (FIND_DRIVERS, "center.latitude", float("nan")),
    (FIND_DRIVERS, "radius_meters", float("inf")),
    (PLAN_ROUTE, "start.longitude", float("nan")),
    (PLAN_ROUTE, "stops[0].location.latitude", float("-inf")),
]

#: Enum fields given a number their enum does not define.
ENUM_CASES = [
    (SIGN_UP, "role"),
    (CREATE_MERCHANT, "handoff_policy"),
    (REPORT_PROBLEM, "reason"),
    (CANCEL_ORDER, "reason"),
    (RATE_ORDER, "target"),
    (LIST_ORDERS, "statuses[0]"),
    (SET_AVAILABILITY, "status"),
    (FIND_DRIVERS, "vehicle_type"),
    (PLAN_ROUTE, "stops[0].kind"),
]

#: Repeated fields given far more entries than any request needs, and how to make one entry.
REPEATED_CASES: list[tuple[Rpc, str, int, Callable[[Message], Any]]] = [
    (CREATE_ORDER, "items", 1001, lambda r: r.items[0]),
    (UPSERT_ITEM, "menu_item.option_groups", 1001, lambda r: r.menu_item.option_groups[0]),
    (MARK_READ, "notification_ids", 200_000, lambda r: "not-an-id"),
    (LIST_ORDERS, "statuses", 1001, lambda r: common_pb2.ORDER_STATUS_PENDING),
    (REPORT_LOCATIONS, "fixes", 1001, lambda r: r.fixes[0]),
    (PLAN_ROUTE, "stops", 1001, lambda r: r.stops[0]),
]


# --- helpers -----------------------------------------------------------------------------------

_PART = re.compile(r"(\w+)(?:\[(\d+)\])?$")


def _locate(message: Any, path: str) -> tuple[Any, str, int | None]:
    """The message holding the field at ``path``, the field's name and the index in it."""
    *parents, last = path.split(".")
    for part in parents:
        match = _PART.match(part)
        assert match, part
        message = getattr(message, match[1])
        if match[2] is not None:
            message = message[int(match[2])]
    match = _PART.match(last)
    assert match, last
    return message, match[1], None if match[2] is None else int(match[2])


def _get(message: Message, path: str) -> Any:
    parent, name, index = _locate(message, path)
    value = getattr(parent, name)
    return value if index is None else value[index]


def _put(message: Message, path: str, value: Any) -> None:
    parent, name, index = _locate(message, path)
    if index is None:
        setattr(parent, name, value)
    else:
        getattr(parent, name)[index] = value


def _raw_call(w: World, rpc: Rpc) -> Any:
    """A unary call that sends the bytes it is given, whatever they are."""
    return w.channels[SERVER[rpc.service]].unary_unary(rpc.path)


async def _refused(
    w: World, rpc: Rpc, body: bytes, caplog: pytest.LogCaptureFixture
) -> tuple[list[error_details_pb2.BadRequest.FieldViolation], grpc.aio.AioRpcError]:
    """Sends ``body`` and checks the refusal: INVALID_ARGUMENT, small, nothing written, no
    ERROR logged, the refusal logged at INFO. Returns the field violations."""
    before = await _tables(w.pool)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _raw_call(w, rpc)(body, metadata=w.callers[rpc.caller], timeout=60)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert await _tables(w.pool) == before, "a refused call changed the database"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        refusals = [
            r
            for r in caplog.records
            if r.levelno == logging.INFO and getattr(r, "method", None) == rpc.path
        ]
        assert refusals and all(r.exc_info is None for r in refusals)
    status = rpc_status.from_call(error)
    assert status is not None
    assert len(status.SerializeToString()) + len(error.details() or "") < SMALL_ANSWER
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(bad.field_violations)
    return violations, error


_TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
# Rows the servers' background workers update on their own (the outbox relay marks rows sent):
# their number is compared, not their content.
_COUNTED_ONLY = {"outbox", "dispatch_jobs", "driver_offers"}


async def _tables(pool: asyncpg.Pool) -> dict[str, Any]:
    """Every table's row count, and a digest of its content where no worker updates it."""
    names = [row["tablename"] for row in await pool.fetch(_TABLES_SQL)]
    parts = []
    for name in names:
        digest = (
            "''"
            if name in _COUNTED_ONLY
            else "coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')"
        )
        parts.append(
            f"SELECT '{name}' AS name, count(*) AS n, {digest} AS digest FROM \"{name}\" t"
        )
    rows = await pool.fetch(" UNION ALL ".join(parts))
    return {row["name"]: (row["n"], row["digest"]) for row in rows}


def _utf8_broken(request: Message, path: str) -> bytes:
    """``request`` serialized with the text at ``path`` made invalid UTF-8 (same length)."""
    marker = "Q" + uuid.uuid4().hex
    _put(request, path, marker)
    body = request.SerializeToString()
    assert body.count(marker.encode()) == 1
    return body.replace(marker.encode(), b"\xc3\x28" + marker.encode()[2:])


def _with_nul(text: str) -> str:
    return text[:1] + "\x00" + text[1:]


def _case_id(case: tuple[Any, ...]) -> str:
    rpc, path = case[0], case[1]
    return f"{rpc.method}-{path}"


# --- unary calls -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", TEXT_CASES, ids=_case_id)
async def test_a_nul_byte_in_text_is_invalid_argument_naming_the_field(
    world: World, caplog: pytest.LogCaptureFixture, case: tuple[Rpc, str]
) -> None:
    rpc, path = case
    request = rpc.make(world)
    _put(request, path, _with_nul(_get(request, path) or "x"))
    violations, _ = await _refused(world, rpc, request.SerializeToString(), caplog)
    assert [(v.field, v.description) for v in violations] == [
        (path, "must not contain NUL characters")
    ]


@pytest.mark.parametrize("case", TEXT_CASES, ids=_case_id)
async def test_invalid_utf8_is_invalid_argument_naming_the_field(
    world: World, caplog: pytest.LogCaptureFixture, case: tuple[Rpc, str]
) -> None:
    rpc, path = case
    body = _utf8_broken(rpc.make(world), path)
    violations, _ = await _refused(world, rpc, body, caplog)
    assert [(v.field, v.description) for v in violations] == [(path, "is not valid UTF-8")]


@pytest.mark.parametrize("case", NUMBER_CASES, ids=_case_id)
async def test_nan_and_infinities_are_invalid_argument(
    world: World, caplog: pytest.LogCaptureFixture, case: tuple[Rpc, str, float]
) -> None:
    rpc, path, value = case
    request = rpc.make(world)
    _put(request, path, value)
    violations, _ = await _refused(world, rpc, request.SerializeToString(), caplog)
    assert [v.field for v in violations] == [path]
    assert violations[0].description.startswith("must be a finite number")


@pytest.mark.parametrize("case", ENUM_CASES, ids=_case_id)
async def test_an_unknown_enum_value_is_invalid_argument(
    world: World, caplog: pytest.LogCaptureFixture, case: tuple[Rpc, str]
) -> None:
    rpc, path = case
    request = rpc.make(world)
    _put(request, path, 99)
    violations, _ = await _refused(world, rpc, request.SerializeToString(), caplog)
    assert [v.field for v in violations] == [path]
    assert "99 is not a value of" in violations[0].description


@pytest.mark.parametrize("case", REPEATED_CASES, ids=_case_id)
async def test_an_oversized_repeated_field_is_invalid_argument(
    world: World, caplog: pytest.LogCaptureFixture, case: tuple[Any, ...]
) -> None:
    rpc, path, count, entry = case
    request = rpc.make(world)
    one = entry(request)
    field = _get(request, path)
    del field[:]
    if isinstance(one, Message):
        for _ in range(count):
            field.add().CopyFrom(one)
    else:
        field.extend([one] * count)
    violations, _ = await _refused(world, rpc, request.SerializeToString(), caplog)
    assert [(v.field, v.description) for v in violations] == [
        (path, f"must hold at most 1000 entries (got {count})")
    ]


async def test_many_bad_fields_make_a_short_answer(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 lines each with a NUL in its note: 20 violations listed and one counting the rest."""
    request = _create_order(world)
    line = request.items[0]
    line.note = "\x00" + "x" * 3000
    del request.items[:]
    for _ in range(1000):
        request.items.add().CopyFrom(line)
    violations, error = await _refused(world, CREATE_ORDER, request.SerializeToString(), caplog)
    assert [v.field for v in violations] == [f"items[{i}].note" for i in range(20)] + [""]
    assert violations[-1].description == "and 980 more violations, not listed"
    assert len(error.details() or "") <= 1000


async def test_a_body_that_does_not_parse_is_invalid_argument(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated body (a field's length runs past the end) is the caller's fault too."""
    violations, _ = await _refused(world, LOGIN, b"\x0a\x7fann@", caplog)
    assert [(v.field, v.description) for v in violations] == [
        ("", "the body is not a valid delivery.order.v1.LoginRequest")
    ]


async def test_an_unauthenticated_call_is_refused_before_its_body_is_judged(
    world: World,
) -> None:
    request = _create_order(world)
    request.note = "\x00"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _raw_call(world, CREATE_ORDER)(request.SerializeToString(), timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- streams -----------------------------------------------------------------------------------


async def _follow_stream(world: World, bodies: list[bytes]) -> grpc.aio.AioRpcError:
    """Sends ``bodies`` on one FollowDrivers stream; returns the error it ends with."""
    call = world.channels["location"].stream_stream(f"/{LOCATION}/FollowDrivers")(
        iter(bodies), metadata=world.callers["service"], timeout=60
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


@pytest.mark.parametrize("bad", ["nul", "utf8", "oversized"])
async def test_a_bad_message_ends_a_client_stream_with_invalid_argument(
    world: World, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    good = location_service_pb2.FollowDriversRequest(follow_driver_ids=[str(uuid.uuid4())])
    request = location_service_pb2.FollowDriversRequest(follow_driver_ids=["a", "b"])
    if bad == "nul":
        request.follow_driver_ids[1] = "b\x00"
        body, field = request.SerializeToString(), "follow_driver_ids[1]"
    elif bad == "utf8":
        body, field = _utf8_broken(request, "follow_driver_ids[1]"), "follow_driver_ids[1]"
    else:
        request.follow_driver_ids.extend(["x"] * 1000)
        body, field = request.SerializeToString(), "follow_driver_ids"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        error = await _follow_stream(world, [good.SerializeToString(), body])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"invalid request: {field}: ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_gps_fixes_keep_their_numbers_for_location_svc_to_judge(world: World) -> None:
    """A NaN heading is location_svc's to judge fix by fix: the stream is not ended for it, and
    a body that does not parse ends it with INVALID_ARGUMENT."""
    courier = await world.market.sign_up(common_pb2.ROLE_DRIVER)
    fix = location_pb2.LocationFix(
        position=_point(),
        accuracy_meters=5,
        heading_degrees=float("nan"),
        speed_mps=float("inf"),
        sequence=1,
    )
    fix.device_time.GetCurrentTime()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def bodies() -> AsyncIterator[bytes]:
        while (body := await queue.get()) is not None:
            yield body

    call = world.channels["location"].stream_stream(f"/{LOCATION}/StreamLocation")(
        bodies(), metadata=courier.metadata, timeout=60
    )
    await queue.put(location_service_pb2.StreamLocationRequest(fix=fix).SerializeToString())
    ack = location_service_pb2.StreamLocationResponse.FromString(await call.read())
    assert ack.accepted_count + ack.dropped_count == 1
    await queue.put(b"\x0a\x7f\x0a")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the body is not a valid delivery.location.v1.StreamLocationRequest" in (
        caught.value.details() or ""
    )


# --- coordinates next to 0 ---------------------------------------------------------------------

TINY = (5e-324, -5e-324, 1e-310, 1e-200, -1e-160)


async def test_coordinates_a_hair_from_zero_are_searched_as_zero(world: World) -> None:
    """PostgreSQL refused the distance SQL with "underflow" for a centre of 5e-324, or 1e-200
    next to a merchant on the equator; such coordinates are 0 now, stored or searched."""
    owner = world.callers["owner"]
    merchants = world.market.merchants
    at_zero = _create_merchant(world)
    at_zero.location.CopyFrom(_point(0.0, 0.0))
    on_equator = (await merchants.CreateMerchant(at_zero, metadata=owner)).merchant
    near = _create_merchant(world)
    near.location.CopyFrom(_point(1e-200, -5e-324))
    stored = (await merchants.CreateMerchant(near, metadata=owner)).merchant
    assert (stored.location.latitude, stored.location.longitude) == (0.0, 0.0)
    for lat in (*TINY, 0.0):
        for lng in (*TINY, 0.0):
            found = await merchants.ListMerchants(
                merchant_service_pb2.ListMerchantsRequest(
                    location=_point(lat, lng), radius_meters=1000, page_size=100
                ),
                metadata=world.callers["customer"],
            )
            ids = {m.merchant.merchant_id for m in found.merchants}
            assert {on_equator.merchant_id, stored.merchant_id} <= ids


@pytest.mark.parametrize("rpc", [CREATE_ORDER, FIND_DRIVERS, PLAN_ROUTE], ids=lambda r: r.method)
async def test_every_rpc_taking_coordinates_takes_them_a_hair_from_zero(
    world: World, rpc: Rpc
) -> None:
    """Never INTERNAL: OK, or a deliberate refusal (far from the shop, say)."""
    for value in TINY:
        request = rpc.make(world)
        for field in request.DESCRIPTOR.fields:
            if field.message_type is common_pb2.LatLng.DESCRIPTOR:
                getattr(request, field.name).CopyFrom(_point(value, value))
        try:
            await _raw_call(world, rpc)(
                request.SerializeToString(), metadata=world.callers[rpc.caller], timeout=60
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                error.details()
            )
