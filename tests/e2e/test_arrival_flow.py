"""Arrival detection end to end: real gRPC over real sockets, real Redis and PostgreSQL.

order_svc and location_svc run in this process on one Redis (the single one, then the Redis
Cluster) as they are deployed: order_svc's outbox relay publishes the order's events on the
order stream, location_svc's fence consumer reads them, its batcher runs the courier's
streamed fixes through the geofences, and order_svc turns the arrival events it reads from the
location stream into notifications. Nothing is called directly: people act through the RPCs.

location_svc.server.build_server takes no geofence rules, so the default ones apply (a 20 s
dwell in a 75 m fence, approaching within 500 m). The dwell is measured on the phone's clock,
so the fixes carry device times spaced as a real courier's would be, starting some minutes in
the past, and are sent without waiting.

The consumer groups start at the oldest retained entry and the single Redis is shared with
other runs: everything here is keyed by fresh users and a fresh order, and only this order's
notifications and events are looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from redis.asyncio import Redis

from delivery.common.v1 import common_pb2
from delivery.location.v1 import (
    location_events_pb2,
    location_pb2,
    location_service_pb2,
    location_service_pb2_grpc,
)
from delivery.order.v1 import order_pb2, order_service_pb2
from location_svc.arrivals import ActiveOrders, decode_fence
from location_svc.domain.geofence import Leg
from location_svc.server import build_server as build_location
from mesh.events import decode_entry, stream_for
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Caller, Market, north, on_redis

#: How long any one thing may take to travel through the mesh before the test gives up.
BOUND_S = 60.0
ARRIVAL_TYPES = (
    order_pb2.NOTIFICATION_TYPE_ARRIVED_AT_MERCHANT,
    order_pb2.NOTIFICATION_TYPE_DRIVER_APPROACHING,
    order_pb2.NOTIFICATION_TYPE_ARRIVED_AT_CUSTOMER,
)
LOCATION_STREAM = stream_for("location")

T = TypeVar("T")


@dataclass
class Mesh:
    market: Market
    location: location_service_pb2_grpc.LocationServiceStub
    redis: Redis


@pytest.fixture
async def mesh(
    store_settings: StoreSettings, stores: Stores, cluster_url: str | None
) -> AsyncIterator[Mesh]:
    """order_svc (with its outbox relay) and location_svc on the test database and one Redis."""
    async with on_redis(store_settings, stores, cluster_url) as (store_settings, stores):
        assert stores.pool is not None and stores.redis is not None
        order_settings = settings_for_test("order", store_settings)
        location_settings = settings_for_test("location", store_settings)
        async with (
            serving(build_order, order_settings, stores) as (_, order_channel),
            serving(build_location, location_settings, stores) as (_, location_channel),
        ):
            yield Mesh(
                Market(order_channel, stores, order_settings),
                location_service_pb2_grpc.LocationServiceStub(location_channel),
                stores.redis,
            )


async def _until(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Polls ``probe`` until it returns something, for at most ``BOUND_S``."""

    async def poll() -> T:
        while True:
            found = await probe()
            if found is not None:
                return found
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), BOUND_S)
    except TimeoutError:
        raise AssertionError(f"not within {BOUND_S} s: {what}") from None


class Phone:
    """A courier's phone: one StreamLocation for the whole shift, fixes stamped by its clock."""

    def __init__(self, mesh: Mesh, courier: Caller, start_ms: int) -> None:
        self._start_ms = start_ms
        self._queue: asyncio.Queue[location_service_pb2.StreamLocationRequest | None] = (
            asyncio.Queue()
        )
        self._sequence = 0
        self.call = mesh.location.StreamLocation(self._requests(), metadata=courier.metadata)

    async def _requests(self) -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    def time_ms(self, t_s: float) -> int:
        """The device time ``t_s`` seconds into the trip."""
        return self._start_ms + round(t_s * 1000)

    async def drive(self, path: list[tuple[float, common_pb2.LatLng, float]]) -> None:
        """Sends ``(t_s, position, speed)`` fixes back to back; returns once all are acked."""
        for t_s, where, speed in path:
            self._sequence += 1
            ms = self.time_ms(t_s)
            fix = location_pb2.LocationFix(
                position=where,
                accuracy_meters=8.0,
                speed_mps=speed,
                device_time=timestamp_pb2.Timestamp(
                    seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000
                ),
                sequence=self._sequence,
            )
            await self._queue.put(location_service_pb2.StreamLocationRequest(fix=fix))

        async def acked() -> location_service_pb2.StreamLocationResponse | None:
            ack = await self.call.read()
            assert ack is not grpc.aio.EOF, "the stream ended early"
            return ack if ack.acked_sequence == self._sequence else None

        ack = await _until(acked, f"the ack of fix {self._sequence}")
        # Every fix believed: none was thought a duplicate, out of order or too fast.
        assert (ack.accepted_count, ack.dropped_count) == (self._sequence, 0)

    async def close(self) -> None:
        await self._queue.put(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call.code(), BOUND_S)


async def _fence_leg(redis: Redis, fences: ActiveOrders, courier: Caller, order_id: str):
    raw = await redis.hget(fences.fence_key(courier.user_id), order_id)
    return None if raw is None else decode_fence(order_id, raw).leg


async def _wait_for_fence(
    mesh: Mesh, courier: Caller, order_id: str, leg: Leg, act: Callable[[], Awaitable[Any]]
) -> None:
    """Does ``act`` and waits until location_svc holds the courier's fence on ``leg``.

    The fence consumer writes the fence to Redis, drops the courier from its own cache and
    then announces the change on a pub/sub channel that every location_svc instance listens
    to: a message heard after the fence is seen in Redis means the cache was dropped too, so
    the next fix is judged against this fence.
    """
    # Only its key names and channel are used: it is never run.
    fences = ActiveOrders(mesh.redis, consumer_name="e2e-probe")
    pubsub = mesh.redis.pubsub()
    await pubsub.subscribe(fences.channel)
    try:
        await act()

        async def changed() -> bool | None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message["data"] != courier.user_id.encode():
                return None
            return True if await _fence_leg(mesh.redis, fences, courier, order_id) == leg else None

        await _until(changed, f"the courier's fence on {leg} for order {order_id}")
    finally:
        await pubsub.aclose()


async def _arrival_notes(mesh: Mesh, who: Caller, order_id: str) -> list[int]:
    """The arrival notification types ``who`` got about ``order_id``, oldest first."""
    feed = await mesh.market.orders.ListNotifications(
        order_service_pb2.ListNotificationsRequest(page_size=100), metadata=who.metadata
    )
    assert not feed.next_page_token, "more notifications than one page holds"
    return [
        n.type
        for n in reversed(feed.notifications)
        if n.order_id == order_id and n.type in ARRIVAL_TYPES
    ]


async def _everyone_has(
    mesh: Mesh, parties: tuple[Caller, ...], order_id: str, expected: list[int]
) -> None:
    async def all_there() -> bool | None:
        for who in parties:
            if len(await _arrival_notes(mesh, who, order_id)) < len(expected):
                return None
        return True

    names = [order_pb2.NotificationType.Name(t) for t in expected]
    await _until(all_there, f"{names} for every party")
    for who in parties:
        assert await _arrival_notes(mesh, who, order_id) == expected


async def _last_entry_id(redis: Redis, stream: str) -> str:
    entries: list[tuple[Any, Any]] = await redis.xrevrange(stream, count=1) or []
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def _arrival_events(
    redis: Redis, after: str, order_id: str
) -> list[location_events_pb2.DriverArrivalEvent]:
    """The arrival events about ``order_id`` appended to the location stream after ``after``."""
    entries: list[tuple[Any, Any]] = await redis.xrange(LOCATION_STREAM, min=f"({after}") or []
    out = []
    for entry_id, fields in entries:
        event = decode_entry(LOCATION_STREAM, entry_id, fields)
        if event.aggregate_id == order_id:
            out.append(location_events_pb2.DriverArrivalEvent.FromString(event.payload))
    return out


async def test_a_courier_arrives_at_the_merchant_then_approaches_and_reaches_the_customer(
    mesh: Mesh,
) -> None:
    market = mesh.market
    owner = await market.sign_up(common_pb2.ROLE_MERCHANT)
    customer = await market.sign_up(common_pb2.ROLE_CUSTOMER)
    courier = await market.sign_up(common_pb2.ROLE_DRIVER)
    parties = (customer, owner, courier)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza, distance_m=1500), metadata=customer.metadata
        )
    ).order
    ref = {"order_id": order.order_id}
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(
            **ref, expected_version=1, estimated_prep_duration=duration_pb2.Duration(seconds=600)
        ),
        metadata=owner.metadata,
    )
    await market.orders.StartPreparing(
        order_service_pb2.StartPreparingRequest(**ref), metadata=owner.metadata
    )
    since = await _last_entry_id(mesh.redis, LOCATION_STREAM)
    await _wait_for_fence(
        mesh,
        courier,
        order.order_id,
        Leg.TO_MERCHANT,
        lambda: market.orders.AssignCourier(
            order_service_pb2.AssignCourierRequest(**ref, driver_id=courier.user_id),
            metadata=market.matching,
        ),
    )

    # The trip starts 15 minutes ago by the phone's clock; all of it is sent at once.
    shop_at, home = shop.location, order.delivery_location
    phone = Phone(mesh, courier, int(time.time() * 1000) - 15 * 60_000)
    try:
        # A drive-by: through the shop's fence at 12 m/s, a fix every 5 s, inside for ~15 s.
        await phone.drive([(5.0 * i, north(shop_at, -300 + 60 * i), 12.0) for i in range(11)])
        # Back later (more than two minutes on: no path is inferred across the gap) and
        # waiting at the door, jittering by a few metres: an arrival once 20 s have passed.
        await phone.drive(
            [(200.0 + 5 * j, north(shop_at, 10 + 4 * (j % 2)), 0.0) for j in range(9)]
        )
        await _everyone_has(mesh, parties, order.order_id, [ARRIVAL_TYPES[0]])
        # Fired by the stay (20 s after the first fix at the door), not by the drive-by: the
        # event fires at most once, so had the drive-by fired it, its time would be here.
        [at_merchant] = await _arrival_events(mesh.redis, since, order.order_id)
        assert at_merchant.type == location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT
        assert at_merchant.driver_id == courier.user_id
        assert at_merchant.occur_time.ToMilliseconds() == phone.time_ms(220)

        await market.orders.MarkOrderReady(
            order_service_pb2.MarkOrderReadyRequest(**ref), metadata=owner.metadata
        )
        await _wait_for_fence(
            mesh,
            courier,
            order.order_id,
            Leg.TO_CUSTOMER,
            lambda: market.orders.PickUpOrder(
                order_service_pb2.PickUpOrderRequest(**ref), metadata=courier.metadata
            ),
        )
        # 2 km short of the customer, then 30 m short a minute later: no fix landed in the
        # 500 m approach band, yet the path crossed it and entered the fence; the stay there
        # lasts the dwell by the third fix.
        await phone.drive(
            [
                (400.0, north(home, -2000), 8.0),
                (460.0, north(home, -30), 8.0),
                (480.0, north(home, -20), 0.0),
                (490.0, north(home, -25), 0.0),
            ]
        )
        await _everyone_has(mesh, parties, order.order_id, list(ARRIVAL_TYPES))
        events = await _arrival_events(mesh.redis, since, order.order_id)
        assert [(e.type, e.occur_time.ToMilliseconds()) for e in events] == [
            (location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT, phone.time_ms(220)),
            (location_events_pb2.ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER, phone.time_ms(460)),
            (location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER, phone.time_ms(480)),
        ]
    finally:
        await phone.close()
