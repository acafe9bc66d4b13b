"""location_svc over real gRPC, Redis and PostgreSQL: the GPS stream, batches, presence, history."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from redis.asyncio import RedisCluster

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from location_svc.domain.presence import DriverStatus
from location_svc.server import build_server as build_location
from location_svc.service import LocationPolicy
from location_svc.store.drivers import DriverStore
from mesh.geo import EARTH_RADIUS_M
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Caller, Market, details, on_redis
from tests.polling import eventually

TTL_S = 2.0


@dataclass
class World:
    market: Market
    location: location_service_pb2_grpc.LocationServiceStub
    stores: Stores


@pytest.fixture
async def world(
    store_settings: StoreSettings, stores: Stores, cluster_url: str | None
) -> AsyncIterator[World]:
    """order_svc (it signs people up) and location_svc on the test database and one Redis.

    Sessions live in Redis, so both servers use the same one: the single Redis, or the cluster.
    """
    async with on_redis(store_settings, stores, cluster_url) as (store_settings, stores):
        order_settings = settings_for_test("order", store_settings)
        location_settings = settings_for_test("location", store_settings)

        async def build(settings, stores):
            return await build_location(
                settings, stores, policy=LocationPolicy(presence_ttl_s=TTL_S)
            )

        async with (
            serving(build_order, order_settings, stores) as (_, order_channel),
            serving(build, location_settings, stores) as (_, location_channel),
        ):
            yield World(
                Market(order_channel, stores, order_settings),
                location_service_pb2_grpc.LocationServiceStub(location_channel),
                stores,
            )


def _spot() -> tuple[float, float]:
    """Somewhere random, so parallel tests never see each other's drivers."""
    return random.uniform(-55, 55), random.uniform(-170, 170)


def _north(lat: float, lng: float, metres: float) -> tuple[float, float]:
    return lat + math.degrees(metres / EARTH_RADIUS_M), lng


def _fix(
    lat: float, lng: float, *, ms: int | None = None, accuracy: float = 8.0, seq: int = 0
) -> location_pb2.LocationFix:
    ms = int(time.time() * 1000) if ms is None else ms
    return location_pb2.LocationFix(
        position=common_pb2.LatLng(latitude=lat, longitude=lng),
        accuracy_meters=accuracy,
        speed_mps=5.0,
        device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
        sequence=seq,
    )


async def _available_driver(world: World) -> Caller:
    driver = await world.market.sign_up(common_pb2.ROLE_DRIVER)
    await world.location.SetAvailability(
        location_service_pb2.SetAvailabilityRequest(status=common_pb2.DRIVER_STATUS_AVAILABLE),
        metadata=driver.metadata,
    )
    return driver


async def _nearby(world: World, lat: float, lng: float, radius: float = 2000):
    reply = await world.location.FindNearbyDrivers(
        location_service_pb2.FindNearbyDriversRequest(
            center=common_pb2.LatLng(latitude=lat, longitude=lng), radius_meters=radius, limit=10
        ),
        metadata=world.market.matching,
    )
    return [d.driver_id for d in reply.drivers]


class Stream:
    """A driver's bidirectional stream, driven message by message."""

    def __init__(self, world: World, driver: Caller) -> None:
        self._queue: asyncio.Queue[location_service_pb2.StreamLocationRequest | None] = (
            asyncio.Queue()
        )
        self.call = world.location.StreamLocation(self._requests(), metadata=driver.metadata)

    async def _requests(self) -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def send(self, fix: location_pb2.LocationFix) -> None:
        await self._queue.put(location_service_pb2.StreamLocationRequest(fix=fix))

    async def ack(self) -> location_service_pb2.StreamLocationResponse:
        return await asyncio.wait_for(self.call.read(), 10)

    async def close(self) -> None:
        await self._queue.put(None)


async def test_streamed_fixes_are_acked_and_searchable(world: World) -> None:
    driver = await _available_driver(world)
    lat, lng = _spot()
    stream = Stream(world, driver)
    await stream.send(_fix(lat, lng, seq=1))
    ack = await stream.ack()
    assert ack.acked_sequence == 1 and ack.accepted_count == 1
    assert ack.next_interval_duration.seconds > 0
    assert driver.user_id in await _nearby(world, lat, lng)
    await stream.close()
    assert await stream.call.code() == grpc.StatusCode.OK


async def test_bad_fixes_are_dropped_and_counted_while_the_stream_lives(world: World) -> None:
    driver = await _available_driver(world)
    lat, lng = _spot()
    now = int(time.time() * 1000)
    stream = Stream(world, driver)
    await stream.send(_fix(lat, lng, ms=now - 10_000, seq=1))
    assert (await stream.ack()).accepted_count == 1
    bad = [
        (_fix(float("nan"), lng, ms=now - 9_000), location_pb2.FIX_DROP_REASON_OUT_OF_RANGE),
        (_fix(lat, lng, ms=now - 8_000, accuracy=500), location_pb2.FIX_DROP_REASON_POOR_ACCURACY),
        (_fix(lat, lng, ms=now + 3_600_000), location_pb2.FIX_DROP_REASON_FUTURE_TIMESTAMP),
        (_fix(lat, lng, ms=now - 3 * 86_400_000), location_pb2.FIX_DROP_REASON_STALE_TIMESTAMP),
        (_fix(lat, lng, ms=now - 10_000), location_pb2.FIX_DROP_REASON_DUPLICATE),
        (_fix(lat, lng, ms=now - 20_000), location_pb2.FIX_DROP_REASON_OUT_OF_ORDER),
        (
            _fix(*_north(lat, lng, 50_000), ms=now - 7_000),
            location_pb2.FIX_DROP_REASON_IMPOSSIBLE_SPEED,
        ),
    ]
    for dropped, (fix, reason) in enumerate(bad, start=1):
        await stream.send(fix)
        ack = await stream.ack()
        assert (ack.dropped_count, ack.last_drop_reason) == (dropped, reason)
        assert ack.accepted_count == 1
    await stream.send(_fix(*_north(lat, lng, 30), ms=now - 5_000, seq=2))
    ack = await stream.ack()
    assert (ack.accepted_count, ack.acked_sequence) == (2, 2)
    await stream.close()
    assert await stream.call.code() == grpc.StatusCode.OK


async def test_a_spoofed_driver_id_is_ignored(world: World) -> None:
    mallory = await _available_driver(world)
    victim = await _available_driver(world)
    lat, lng = _spot()
    # A message with an extra field a newer client might use for a driver id (field 99,
    # a string): the server must attribute the fix to the session's driver regardless.
    fix = _fix(lat, lng, seq=1)
    request = location_service_pb2.StreamLocationRequest(fix=fix)
    spoof = victim.user_id.encode()
    request.MergeFromString(b"\x9a\x06" + bytes([len(spoof)]) + spoof)
    stream = Stream(world, mallory)
    await stream._queue.put(request)
    await stream.ack()
    await stream.close()
    found = await _nearby(world, lat, lng)
    assert mallory.user_id in found and victim.user_id not in found
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(
                status=common_pb2.DRIVER_STATUS_OFFLINE, driver_id=victim.user_id
            ),
            metadata=mallory.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_silent_driver_disappears_and_busy_drivers_are_not_dispatchable(
    world: World,
) -> None:
    driver = await _available_driver(world)
    other = await _available_driver(world)
    streamer = await _available_driver(world)
    lat, lng = _spot()
    for who in (driver, other):
        await world.location.ReportLocations(
            location_service_pb2.ReportLocationsRequest(fixes=[_fix(lat, lng)]),
            metadata=who.metadata,
        )
    stream = Stream(world, streamer)
    await stream.send(_fix(lat, lng, seq=1))
    await stream.ack()
    await stream.close()
    assert await stream.call.code() == grpc.StatusCode.OK
    found = set(await _nearby(world, lat, lng))
    # The courier whose app hung up its stream is out at once (test_ingest_hardening).
    assert {driver.user_id, other.user_id} <= found and streamer.user_id not in found

    await world.location.SetAvailability(
        location_service_pb2.SetAvailabilityRequest(
            status=common_pb2.DRIVER_STATUS_BUSY, driver_id=other.user_id
        ),
        metadata=world.market.matching,
    )
    assert other.user_id not in await _nearby(world, lat, lng)

    # Silence: no fix for longer than the presence TTL.
    await asyncio.sleep(TTL_S + 0.5)
    found = set(await _nearby(world, lat, lng))
    assert driver.user_id not in found and streamer.user_id not in found

    async def presence_of(who: Caller):
        reply = await world.location.GetDriverLocation(
            location_service_pb2.GetDriverLocationRequest(driver_id=who.user_id),
            metadata=world.market.matching,
        )
        return reply.location

    # A client that never streams and went quiet is silent; one that hung up is closed.
    quiet = await presence_of(driver)
    assert quiet.presence == location_pb2.PRESENCE_SILENT
    assert quiet.position_age_duration.seconds >= 2
    assert (await presence_of(streamer)).presence == location_pb2.PRESENCE_STREAM_CLOSED


async def _statuses(world: World, lat: float, lng: float, *, include_busy: bool):
    reply = await world.location.FindNearbyDrivers(
        location_service_pb2.FindNearbyDriversRequest(
            center=common_pb2.LatLng(latitude=lat, longitude=lng),
            radius_meters=2000,
            limit=10,
            include_busy=include_busy,
        ),
        metadata=world.market.matching,
    )
    return {d.driver_id: d.status for d in reply.drivers}


async def test_a_status_change_reaches_the_open_stream_and_busy_couriers_are_found_on_request(
    world: World,
) -> None:
    courier = await _available_driver(world)
    idle = await _available_driver(world)
    lat, lng = _spot()
    await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=[_fix(*_north(lat, lng, 300))]),
        metadata=idle.metadata,
    )
    stream = Stream(world, courier)
    now = int(time.time() * 1000)
    await stream.send(_fix(lat, lng, ms=now - 3_000, seq=1))
    await stream.ack()

    async def set_status(status: int) -> None:
        await world.location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(status=status, driver_id=courier.user_id),
            metadata=world.market.matching,
        )

    # Matching makes the courier busy while their stream stays open: the fixes that follow
    # keep them out of the plain search, and in the one that asks for busy couriers.
    await set_status(common_pb2.DRIVER_STATUS_BUSY)
    await stream.send(_fix(*_north(lat, lng, 20), ms=now - 2_000, seq=2))
    await stream.ack()
    assert await _statuses(world, lat, lng, include_busy=False) == {
        idle.user_id: common_pb2.DRIVER_STATUS_AVAILABLE
    }
    assert await _statuses(world, lat, lng, include_busy=True) == {
        courier.user_id: common_pb2.DRIVER_STATUS_BUSY,
        idle.user_id: common_pb2.DRIVER_STATUS_AVAILABLE,
    }
    # Offline: in neither, however many fixes still come.
    await set_status(common_pb2.DRIVER_STATUS_OFFLINE)
    await stream.send(_fix(*_north(lat, lng, 40), ms=now - 1_000, seq=3))
    await stream.ack()
    assert courier.user_id not in await _statuses(world, lat, lng, include_busy=True)
    # Available again: back in the plain search, and in one place only.
    await set_status(common_pb2.DRIVER_STATUS_AVAILABLE)
    await stream.send(_fix(*_north(lat, lng, 60), ms=now, seq=4))
    await stream.ack()
    assert (await _statuses(world, lat, lng, include_busy=True))[
        courier.user_id
    ] == common_pb2.DRIVER_STATUS_AVAILABLE
    assert courier.user_id in await _statuses(world, lat, lng, include_busy=False)
    await stream.close()
    assert await stream.call.code() == grpc.StatusCode.OK


async def test_a_status_change_missed_while_redis_dropped_the_subscription_still_applies(
    world: World,
) -> None:
    """Pub/sub keeps nothing for an absent subscriber: after subscribing again, the instance
    reads its open streams' statuses afresh."""
    courier = await _available_driver(world)
    lat, lng = _spot()
    stream = Stream(world, courier)
    sent = 0

    async def fix() -> None:
        nonlocal sent
        sent += 1
        await stream.send(_fix(*_north(lat, lng, sent), seq=sent))
        await stream.ack()

    await fix()
    assert courier.user_id in await _nearby(world, lat, lng)
    assert world.stores.pool is not None and world.stores.redis is not None
    # Another instance takes the courier offline while this one's subscription is gone: its
    # message is lost (here: written as that instance would, then every subscriber dropped).
    await DriverStore(world.stores.redis, world.stores.pool).set_status(
        courier.user_id, DriverStatus.OFFLINE, None
    )
    await world.stores.redis.client_kill_filter(_type="pubsub", **_everywhere(world.stores.redis))

    async def gone() -> bool:
        await fix()
        return courier.user_id not in await _nearby(world, lat, lng)

    # Until the listener is back, fixes still file the courier; after, they never do.
    await eventually(gone, every_s=0.2)
    await fix()
    assert courier.user_id not in await _nearby(world, lat, lng)
    await stream.close()


def _everywhere(redis: object) -> dict[str, object]:
    """A command's routing to every node of a cluster (nothing for a single Redis)."""
    return {"target_nodes": RedisCluster.ALL_NODES} if isinstance(redis, RedisCluster) else {}


async def test_a_replayed_backlog_goes_to_history_without_moving_the_driver(
    world: World,
) -> None:
    driver = await _available_driver(world)
    lat, lng = _spot()
    now = int(time.time() * 1000)
    await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=[_fix(lat, lng, ms=now)]),
        metadata=driver.metadata,
    )
    # Ten minutes buffered offline, each fix a bit further north, all older than the live one.
    backlog = [_fix(*_north(lat, lng, 100 * i), ms=now - 600_000 + 60_000 * i) for i in range(10)]
    reply = await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=backlog), metadata=driver.metadata
    )
    assert (reply.accepted_count, reply.backfilled_count, len(reply.dropped)) == (0, 10, 0)
    where = await world.location.GetDriverLocation(
        location_service_pb2.GetDriverLocationRequest(driver_id=driver.user_id),
        metadata=driver.metadata,
    )
    assert where.location.position.latitude == pytest.approx(lat)
    assert where.location.fix_time.ToMilliseconds() == now

    pool = world.stores.pool
    assert pool is not None
    rows = []
    for _ in range(100):
        rows = await pool.fetch(
            "SELECT backfilled, tableoid::regclass::text AS part, recorded_at"
            " FROM driver_location_history WHERE driver_id = $1::uuid",
            driver.user_id,
        )
        if len(rows) == 11:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 11
    assert sum(r["backfilled"] for r in rows) == 10
    for row in rows:
        assert row["part"] == f"driver_location_history_{row['recorded_at']:%Y%m%d}"


async def test_history_lands_in_the_partition_of_its_day(world: World) -> None:
    driver = await _available_driver(world)
    lat, lng = _spot()
    yesterday = int(time.time() * 1000) - 86_400_000 + 60_000
    await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=[_fix(lat, lng, ms=yesterday)]),
        metadata=driver.metadata,
    )
    pool = world.stores.pool
    assert pool is not None
    part = None
    for _ in range(100):
        part = await pool.fetchval(
            "SELECT tableoid::regclass::text FROM driver_location_history"
            " WHERE driver_id = $1::uuid",
            driver.user_id,
        )
        if part:
            break
        await asyncio.sleep(0.05)
    expected = time.strftime("%Y%m%d", time.gmtime(yesterday / 1000))
    assert part == f"driver_location_history_{expected}"


async def test_batches_refuse_bad_shapes(world: World) -> None:
    driver = await _available_driver(world)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.location.ReportLocations(
            location_service_pb2.ReportLocationsRequest(fixes=[_fix(0, 0)] * 501),
            metadata=driver.metadata,
        )
    assert details(caught.value)[1] == ["fixes"]
    customer = await world.market.sign_up(common_pb2.ROLE_CUSTOMER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.location.FindNearbyDrivers(
            location_service_pb2.FindNearbyDriversRequest(
                center=common_pb2.LatLng(latitude=1, longitude=1)
            ),
            metadata=customer.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.location.FindNearbyDrivers(
            location_service_pb2.FindNearbyDriversRequest(
                center=common_pb2.LatLng(latitude=91, longitude=1), radius_meters=-1
            ),
            metadata=world.market.matching,
        )
    assert set(details(caught.value)[1]) == {"center.latitude", "radius_meters"}


async def test_watchers_get_live_positions_throttled(world: World) -> None:
    driver = await _available_driver(world)
    lat, lng = _spot()
    await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=[_fix(lat, lng)]),
        metadata=driver.metadata,
    )
    watch = world.location.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(
            driver_id=driver.user_id, min_interval_duration=duration_pb2.Duration(nanos=100_000_000)
        ),
        metadata=world.market.matching,
    )
    first = await asyncio.wait_for(watch.read(), 10)
    assert first.location.position.latitude == pytest.approx(lat)
    stream = Stream(world, driver)
    target = _north(lat, lng, 40)

    async def keep_sending() -> None:
        step = 0
        while True:
            step += 1
            await stream.send(_fix(*target, seq=step))
            await stream.ack()
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(keep_sending())
    try:
        update = await asyncio.wait_for(watch.read(), 10)
        assert update.location.position.latitude == pytest.approx(target[0])
        assert update.location.presence == location_pb2.PRESENCE_ONLINE
    finally:
        sender.cancel()
        watch.cancel()
        await stream.close()


async def test_a_watcher_gets_at_most_one_position_per_interval_and_the_latest_last(
    world: World,
) -> None:
    driver = await _available_driver(world)
    lat, lng = _spot()
    interval = 1.5
    watch = world.location.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(
            driver_id=driver.user_id,
            min_interval_duration=duration_pb2.Duration(seconds=1, nanos=500_000_000),
        ),
        metadata=world.market.matching,
    )
    await asyncio.wait_for(watch.read(), 10)  # the current position (none yet)
    stream = Stream(world, driver)
    received: list[tuple[float, float]] = []  # (when, latitude)
    heard = asyncio.Event()

    async def read_all() -> None:
        while True:
            update = await watch.read()
            received.append((time.monotonic(), update.location.position.latitude))
            heard.set()

    reader = asyncio.create_task(read_all())
    step = 0
    try:
        # Fixes as fast as the stream acks them (an ack at most every 0.5 s) until the watcher
        # hears one (the watched set is refreshed each second), then 15 more: about three
        # per interval.
        while not received:
            step += 1
            await stream.send(_fix(*_north(lat, lng, 5 * step), seq=step))
            await stream.ack()
            await asyncio.sleep(0.05)
        for _ in range(15):
            step += 1
            await stream.send(_fix(*_north(lat, lng, 5 * step), seq=step))
            await stream.ack()
            await asyncio.sleep(0.05)
        last = _north(lat, lng, 5 * step)[0]
        # The newest position is held back, not dropped: it comes once the interval is up.
        while True:
            heard.clear()
            if received[-1][1] == pytest.approx(last):
                break
            await heard.wait()
    finally:
        reader.cancel()
        watch.cancel()
        await stream.close()
    first, final = received[0][0], received[-1][0]
    # However slow the machine, no more than one update per interval after the first.
    assert len(received) <= 2 + (final - first) / interval, received
