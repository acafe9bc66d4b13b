"""LocationService.GetFleet over real gRPC, Redis (single and cluster) and PostgreSQL: an
operator's bounded, rate-limited view of the couriers in a box."""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from location_svc.server import build_server as build_location
from location_svc.service import LocationPolicy
from mesh.geo import EARTH_RADIUS_M
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Caller, Market, details, on_redis

#: GetFleet calls per caller per minute on the test server.
QUOTA = 5
S = common_pb2


@dataclass
class World:
    market: Market
    location: location_service_pb2_grpc.LocationServiceStub


async def _world(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[World]:
    order_settings = settings_for_test("order", store_settings)
    location_settings = settings_for_test("location", store_settings)

    async def build(settings, stores):
        return await build_location(
            settings, stores, policy=LocationPolicy(fleet_calls_per_minute=QUOTA)
        )

    async with (
        serving(build_order, order_settings, stores) as (_, order_channel),
        serving(build, location_settings, stores) as (_, location_channel),
    ):
        yield World(
            Market(order_channel, stores, order_settings),
            location_service_pb2_grpc.LocationServiceStub(location_channel),
        )


@pytest.fixture
async def world(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[World]:
    """order_svc (it signs people up) and location_svc on the single test Redis."""
    async for built in _world(store_settings, stores):
        yield built


@pytest.fixture
async def any_world(
    store_settings: StoreSettings, stores: Stores, cluster_url: str | None
) -> AsyncIterator[World]:
    """The same on the single Redis, then on a Redis Cluster."""
    async with on_redis(store_settings, stores, cluster_url) as (store_settings, stores):
        async for built in _world(store_settings, stores):
            yield built


def _spot() -> tuple[float, float]:
    """Somewhere random, so no other test's couriers are in the box."""
    return random.uniform(-55, 55), random.uniform(-170, 170)


def _moved(lat: float, lng: float, north_m: float, east_m: float) -> common_pb2.LatLng:
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlng = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return common_pb2.LatLng(latitude=lat + dlat, longitude=lng + dlng)


def _box(
    lat: float, lng: float, half_m: float, max_couriers: int = 0
) -> location_service_pb2.GetFleetRequest:
    return location_service_pb2.GetFleetRequest(
        south_west=_moved(lat, lng, -half_m, -half_m),
        north_east=_moved(lat, lng, half_m, half_m),
        max_couriers=max_couriers,
    )


async def _courier_at(world: World, where: common_pb2.LatLng, status: int) -> Caller:
    """A courier whose app reported one fresh fix at ``where``, then set ``status``."""
    courier = await world.market.sign_up(S.ROLE_DRIVER)
    await world.location.SetAvailability(
        location_service_pb2.SetAvailabilityRequest(status=S.DRIVER_STATUS_AVAILABLE),
        metadata=courier.metadata,
    )
    ms = time.time_ns() // 1_000_000
    fix = location_pb2.LocationFix(
        position=where,
        accuracy_meters=8.0,
        speed_mps=3.0,
        device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        sequence=1,
    )
    reply = await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(request_id=courier.user_id, fixes=[fix]),
        metadata=courier.metadata,
    )
    assert reply.accepted_count == 1
    if status != S.DRIVER_STATUS_AVAILABLE:
        await world.location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(status=status), metadata=courier.metadata
        )
    return courier


async def _refused(call, request, metadata) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=metadata)
    return caught.value


async def test_an_admin_sees_the_couriers_in_the_box_nearest_its_centre_first(
    any_world: World,
) -> None:
    world = any_world
    lat, lng = _spot()
    # Five couriers inside a 2 km box, nearest the centre first; the fourth is busy.
    inside = [
        await _courier_at(
            world,
            _moved(lat, lng, 100.0 * (i + 1), 50.0),
            S.DRIVER_STATUS_BUSY if i == 3 else S.DRIVER_STATUS_AVAILABLE,
        )
        for i in range(5)
    ]
    # Near a corner, inside the box though farther from the centre than any box edge.
    corner = await _courier_at(world, _moved(lat, lng, 900.0, 900.0), S.DRIVER_STATUS_AVAILABLE)
    # Outside the box, though nearer its centre than the corner one; and offline inside it.
    await _courier_at(world, _moved(lat, lng, 0.0, 1_100.0), S.DRIVER_STATUS_AVAILABLE)
    await _courier_at(world, _moved(lat, lng, 10.0, 10.0), S.DRIVER_STATUS_OFFLINE)
    admin = await world.market.admin()

    fleet = await world.location.GetFleet(_box(lat, lng, 1_000.0), metadata=admin.metadata)
    assert [c.driver_id for c in fleet.couriers] == [c.user_id for c in [*inside, corner]]
    assert not fleet.truncated
    statuses = [c.status for c in fleet.couriers[:5]]
    assert statuses == [S.DRIVER_STATUS_AVAILABLE] * 3 + [S.DRIVER_STATUS_BUSY] * 1 + [
        S.DRIVER_STATUS_AVAILABLE
    ]
    first = fleet.couriers[0]
    assert first.vehicle_type == S.VEHICLE_TYPE_BICYCLE
    assert abs(first.position.latitude - _moved(lat, lng, 100.0, 50.0).latitude) < 1e-4
    assert first.fix_time.seconds > 0 and first.position_age_duration.seconds < 30

    # The bound holds: the nearest three, and a box that says there are more.
    fleet = await world.location.GetFleet(
        _box(lat, lng, 1_000.0, max_couriers=3), metadata=admin.metadata
    )
    assert [c.driver_id for c in fleet.couriers] == [c.user_id for c in inside[:3]]
    assert fleet.truncated
    # A smaller box holds fewer.
    fleet = await world.location.GetFleet(_box(lat, lng, 250.0), metadata=admin.metadata)
    assert [c.driver_id for c in fleet.couriers] == [c.user_id for c in inside[:2]]
    assert not fleet.truncated


async def test_the_box_is_cut_along_its_meridians(world: World) -> None:
    # Far from the equator a box's east edge is shorter in metres at its poleward side than
    # Redis's box (as wide at every latitude) is: a courier just east of it there is not in it.
    lat, lng = random.uniform(58.0, 62.0), random.uniform(-170, 170)
    south_west = common_pb2.LatLng(latitude=lat, longitude=lng)
    north_east = common_pb2.LatLng(latitude=lat + 0.3, longitude=lng + 0.3)
    near_edge = _moved(north_east.latitude, north_east.longitude, -100.0, -20.0)
    past_edge = _moved(north_east.latitude, north_east.longitude, -100.0, 20.0)
    inside = await _courier_at(world, near_edge, S.DRIVER_STATUS_AVAILABLE)
    await _courier_at(world, past_edge, S.DRIVER_STATUS_AVAILABLE)
    admin = await world.market.admin()
    fleet = await world.location.GetFleet(
        location_service_pb2.GetFleetRequest(south_west=south_west, north_east=north_east),
        metadata=admin.metadata,
    )
    assert [c.driver_id for c in fleet.couriers] == [inside.user_id]


async def test_only_admins_may_read_the_fleet(world: World) -> None:
    lat, lng = _spot()
    market = world.market
    for role in (S.ROLE_CUSTOMER, S.ROLE_DRIVER, S.ROLE_MERCHANT):
        caller = await market.sign_up(role)
        err = await _refused(world.location.GetFleet, _box(lat, lng, 500.0), caller.metadata)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED, S.Role.Name(role)
    # The mesh's own services do not read it either.
    err = await _refused(world.location.GetFleet, _box(lat, lng, 500.0), market.matching)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    err = await _refused(world.location.GetFleet, _box(lat, lng, 500.0), ())
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_missing_wrong_or_too_large_box_is_invalid_argument(world: World) -> None:
    admin = await world.market.admin()
    lat, lng = _spot()
    box = _box(lat, lng, 500.0)
    L = common_pb2.LatLng
    cases: list[tuple[location_service_pb2.GetFleetRequest, list[str]]] = [
        (location_service_pb2.GetFleetRequest(), ["south_west", "north_east"]),
        (
            location_service_pb2.GetFleetRequest(south_west=box.south_west),
            ["north_east"],
        ),
        (
            location_service_pb2.GetFleetRequest(
                south_west=box.north_east, north_east=box.south_west
            ),
            ["north_east.latitude", "north_east.longitude"],
        ),
        # 0.5 degrees of latitude: about 56 km.
        (
            location_service_pb2.GetFleetRequest(
                south_west=L(latitude=lat, longitude=lng),
                north_east=L(latitude=lat + 0.5, longitude=lng + 0.01),
            ),
            ["north_east"],
        ),
        (
            location_service_pb2.GetFleetRequest(
                south_west=L(latitude=85.1, longitude=10.0),
                north_east=L(latitude=85.2, longitude=10.1),
            ),
            ["south_west.latitude", "north_east.latitude"],
        ),
        (
            location_service_pb2.GetFleetRequest(
                south_west=L(latitude=89.9, longitude=10.0),
                north_east=L(latitude=91.0, longitude=10.1),
            ),
            ["north_east.latitude"],
        ),
        (_box(lat, lng, 500.0, max_couriers=2001), ["max_couriers"]),
        (_box(lat, lng, 500.0, max_couriers=-1), ["max_couriers"]),
    ]
    for request, fields in cases:
        err = await _refused(world.location.GetFleet, request, admin.metadata)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, request
        assert details(err)[1] == fields, request
    # Refused requests do not use up the caller's quota.
    assert len(cases) > QUOTA
    fleet = await world.location.GetFleet(box, metadata=admin.metadata)
    assert list(fleet.couriers) == [] and not fleet.truncated


async def test_each_caller_may_read_the_fleet_so_often(world: World) -> None:
    first, second = await world.market.admin(), await world.market.admin()
    lat, lng = _spot()
    for _ in range(QUOTA):
        await world.location.GetFleet(_box(lat, lng, 500.0), metadata=first.metadata)
    err = await _refused(world.location.GetFleet, _box(lat, lng, 500.0), first.metadata)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, _ = details(err)
    assert reason == "FLEET_RATE_LIMITED"
    status = _error_metadata(err)
    assert 0 < int(status["retry_after_ms"]) <= 60_000
    assert status["limit"] == str(QUOTA)
    # Another operator is not held back by the first.
    await world.location.GetFleet(_box(lat, lng, 500.0), metadata=second.metadata)


def _error_metadata(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata of an error."""
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    raise AssertionError("no ErrorInfo")
