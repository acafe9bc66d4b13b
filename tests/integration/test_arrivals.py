"""Arrival detection over real Redis and PostgreSQL: order events in, fixes in, notifications out.

Each test uses its own streams and key prefix, so parallel runs and other tests do not meet.
Order events are published the way the outbox relay publishes them; fixes are handed to the
detector the way the batcher does after a flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_events_pb2
from delivery.order.v1 import order_events_pb2
from location_svc.arrivals import (
    ActiveOrders,
    ArrivalDetector,
    build_arrivals,
    event_id,
    fired_field,
)
from location_svc.domain.fixes import Fix
from location_svc.domain.geofence import ArrivalKind, GeofenceRules
from location_svc.domain.presence import DriverStatus
from location_svc.ingest import Update
from mesh.events import Event, decode_entry, entry_fields, stream_for
from mesh.geo import EARTH_RADIUS_M
from mesh.stores import Stores
from order_svc.arrival_notifications import ArrivalNotifier, build_arrival_notifier
from tests.integration.rows import DOOR, SHOP, shop_order
from tests.polling import eventually

RULES = GeofenceRules(dwell_s=20, approach_m=500, approach_s=0)
MERCHANT = SHOP
CUSTOMER = DOOR  # about 1 km north
T0 = int(datetime.now(UTC).timestamp() * 1000)
T0_DT = datetime.fromtimestamp(T0 / 1000, UTC)
ARRIVED_AT_MERCHANT = location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT
ARRIVED_AT_CUSTOMER = location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER
APPROACHING = location_events_pb2.ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER
ET = order_events_pb2


def north_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return point[0] + math.degrees(metres / EARTH_RADIUS_M), point[1]


def update(driver_id: str, point: tuple[float, float], t_s: float, speed: float = 0.0) -> Update:
    """A stored live fix as the batcher hands it over."""
    fix = Fix(point[0], point[1], 5.0, 0.0, speed, T0 + round(t_s * 1000))
    return Update(driver_id, fix, DriverStatus.BUSY, "bicycle", "", "", fix.device_time_ms)


@dataclass
class Rig:
    """One location instance's arrival detection, on streams and keys of its own."""

    redis: Redis
    order_stream: str
    location_stream: str
    prefix: str
    orders: ActiveOrders
    detector: ArrivalDetector
    next_event_id: int = 1
    #: The instance's workers (fence listener, order consumer, outbox relay) and their stops.
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stops: list[Callable[[], None]] = field(default_factory=list)

    async def halt(self) -> None:
        """Stops the instance's workers, as if its process had gone."""
        for stop in self.stops:
            stop()
        await asyncio.gather(*self.tasks)

    async def publish(self, event: order_events_pb2.OrderEvent) -> None:
        """Appends an order event as the outbox relay would."""
        fields = entry_fields(
            event_id=self.next_event_id,
            event_type=f"order.{ET.OrderEventType.Name(event.type).lower()}",
            aggregate_id=event.order_id,
            payload=event.SerializeToString(),
            occurred_at=datetime.now(UTC),
        )
        self.next_event_id += 1
        await self.redis.xadd(self.order_stream, fields)

    async def handled(self, *instances: ActiveOrders) -> None:
        """Waits until the instances' consumers have handled every order event published."""
        group = instances or (self.orders,)

        async def done() -> bool:
            return sum(o.consumer.handled for o in group) >= self.next_event_id - 1

        await eventually(done)

    async def arrivals(self) -> list[tuple[Event, location_events_pb2.DriverArrivalEvent]]:
        """The arrival events on the location stream so far."""
        out = []
        entries: list[tuple[Any, Any]] = await self.redis.xrange(self.location_stream) or []
        for entry_id, fields in entries:
            event = decode_entry(self.location_stream, entry_id, fields)
            out.append((event, location_events_pb2.DriverArrivalEvent.FromString(event.payload)))
        return out


def order_event(
    kind: int,
    order_id: str,
    driver_id: str,
    version: int,
    *,
    status: int = common_pb2.ORDER_STATUS_READY_FOR_PICKUP,
    previous_driver_id: str = "",
) -> order_events_pb2.OrderEvent:
    return order_events_pb2.OrderEvent(
        event_id=uuid.uuid4().hex,
        order_id=order_id,
        type=kind,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        version=version,
        driver_id=driver_id,
        previous_driver_id=previous_driver_id,
        merchant_location=common_pb2.LatLng(latitude=MERCHANT[0], longitude=MERCHANT[1]),
        delivery_location=common_pb2.LatLng(latitude=CUSTOMER[0], longitude=CUSTOMER[1]),
    )


async def _cleanup(redis: Redis, tag: str, *streams: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"*-test-{tag}*")]
    await redis.delete(*streams, *keys)


@contextlib.asynccontextmanager
async def _rigs(redis: Redis) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Starts arrival detection instances that share one test's streams and keys."""
    tag = uuid.uuid4().hex[:10]
    order_stream = stream_for(f"order-test-{tag}")
    location_stream = stream_for(f"location-test-{tag}")
    prefix = f"fence-test-{tag}"
    stops: list[Callable[[], None]] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(name: str = "a") -> Rig:
        orders, detector, workers = build_arrivals(
            redis,
            rules=RULES,
            consumer_name=name,
            order_stream=order_stream,
            location_stream=location_stream,
            prefix=prefix,
        )
        mine = [asyncio.create_task(run()) for run, _ in workers]
        tasks.extend(mine)
        stops.extend(stop for _, stop in workers)
        await orders.ready.wait()
        return Rig(
            redis,
            order_stream,
            location_stream,
            prefix,
            orders,
            detector,
            tasks=mine,
            stops=[stop for _, stop in workers],
        )

    try:
        yield start
    finally:
        for stop in stops:
            stop()
        await asyncio.gather(*tasks)
        await _cleanup(redis, tag, order_stream, location_stream)


@pytest.fixture
async def start_rig(any_redis: Redis) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Arrival detection on the single Redis and on the Redis Cluster in turn."""
    async with _rigs(any_redis) as start:
        yield start


async def test_an_arrival_fires_once_after_the_dwell_and_not_on_a_drive_by(
    start_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await start_rig()
    driver, order, idle = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await rig.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, driver, 3))
    await rig.handled()
    assert rig.orders.has(driver) and not rig.orders.has(idle)

    # Through the merchant's fence at 12 m/s, a fix every 5 s: inside for about 15 s.
    drive_by = [update(driver, north_of(MERCHANT, -300 + 60 * i), 5 * i, 12) for i in range(11)]
    await rig.detector.on_stored(drive_by)
    assert await rig.arrivals() == []

    # Back, and waiting at the merchant: one event after 20 s, however long the wait.
    # (More than max_gap_s after the drive-by, so no path is inferred from it.)
    for second in range(300, 400, 5):
        await rig.detector.on_stored(
            [update(idle, CUSTOMER, second), update(driver, north_of(MERCHANT, 10), second)]
        )
    [(event, arrival)] = await rig.arrivals()
    assert arrival.type == ARRIVED_AT_MERCHANT
    assert (arrival.order_id, arrival.driver_id) == (order, driver)
    assert arrival.occur_time.ToMilliseconds() == T0 + 320_000
    assert (event.event_id, event.aggregate_id) == (arrival.event_id, order)
    assert event.type == "location.arrived_at_merchant"
    assert rig.detector.published == 1


async def test_a_crossing_between_two_sparse_fixes_approaches_then_arrives(
    start_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await start_rig()
    driver, order = str(uuid.uuid4()), str(uuid.uuid4())
    await rig.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, driver, 3))
    # Not yet picked up: the customer's fence does not count.
    await rig.handled()
    await rig.detector.on_stored([update(driver, CUSTOMER, s) for s in range(0, 60, 10)])
    assert await rig.arrivals() == []

    await rig.publish(
        order_event(
            ET.ORDER_EVENT_TYPE_PICKED_UP,
            order,
            driver,
            4,
            status=common_pb2.ORDER_STATUS_PICKED_UP,
        )
    )
    await rig.handled()
    await rig.detector.on_stored([update(driver, north_of(CUSTOMER, -2000), 200)])
    # The next fix is 30 m away a minute later: no fix ever landed in the 500 m band.
    await rig.detector.on_stored([update(driver, north_of(CUSTOMER, -30), 260)])
    assert [a.type for _, a in await rig.arrivals()] == [APPROACHING]
    # The dwell counts from the entry into the fence interpolated between the two fixes.
    await rig.detector.on_stored([update(driver, north_of(CUSTOMER, -20), 280)])
    arrivals = [a for _, a in await rig.arrivals()]
    assert [a.type for a in arrivals] == [APPROACHING, ARRIVED_AT_CUSTOMER]
    assert len({a.event_id for a in arrivals}) == 2


async def test_instances_share_fences_and_fire_each_event_once(
    start_rig: Callable[..., Awaitable[Rig]],
) -> None:
    a = await start_rig("a")
    driver, order = str(uuid.uuid4()), str(uuid.uuid4())
    await a.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, driver, 3))
    await a.handled()
    # A second instance finds the fence in Redis and starts tracking the courier.
    b = await start_rig("b")
    assert b.orders.has(driver)
    await b.detector.on_stored([update(driver, north_of(MERCHANT, 500), 0)])

    # The courier's fixes reach both (a reconnect moved their stream): one event all the same.
    await a.detector.on_stored([update(driver, MERCHANT, s) for s in range(0, 30, 5)])
    await b.detector.on_stored([update(driver, MERCHANT, s) for s in range(30, 90, 5)])
    assert [x.type for _, x in await a.arrivals()] == [ARRIVED_AT_MERCHANT]
    assert (a.detector.published, b.detector.published, b.detector.already_fired) == (1, 0, 1)

    # An instance started later reads what fired with the fences and does not even try.
    c = await start_rig("c")
    await c.detector.on_stored([update(driver, MERCHANT, s) for s in range(90, 150, 5)])
    assert (c.detector.published, c.detector.already_fired) == (0, 0)
    assert len(await a.arrivals()) == 1

    # Whichever instance's consumer handles the pickup, the other hears of it.
    heard = b.orders.heard, a.orders.heard
    b.next_event_id = a.next_event_id
    await b.publish(
        order_event(
            ET.ORDER_EVENT_TYPE_PICKED_UP,
            order,
            driver,
            4,
            status=common_pb2.ORDER_STATUS_PICKED_UP,
        )
    )
    await b.handled(a.orders, b.orders, c.orders)

    async def both_heard() -> bool:
        return b.orders.heard > heard[0] and a.orders.heard > heard[1]

    await eventually(both_heard)
    await b.detector.on_stored([update(driver, CUSTOMER, s) for s in range(90, 120, 5)])
    assert [x.type for _, x in await a.arrivals()] == [
        ARRIVED_AT_MERCHANT,
        APPROACHING,
        ARRIVED_AT_CUSTOMER,
    ]


async def test_finished_orders_lose_their_fences_and_late_events_stay_dead(
    start_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await start_rig()
    driver, other, order = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    redis = rig.redis
    assigned = order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, driver, 3)
    await rig.publish(assigned)
    # Reassigned to another courier: announced as an assignment naming the previous one.
    await rig.publish(
        order_event(
            ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, other, 4, previous_driver_id=driver
        )
    )
    await rig.handled()
    assert await redis.hkeys(rig.orders.fence_key(driver)) == []
    assert await redis.hkeys(rig.orders.fence_key(other)) == [order.encode()]
    await rig.detector.on_stored([update(driver, MERCHANT, s) for s in range(0, 40, 5)])
    assert await rig.arrivals() == []
    assert not rig.orders.has(driver)
    # A handler retried after a failure applies (and announces) the same change again.
    [(_, stored)] = (await rig.orders.views([other]))[other].fences.items()
    assert stored.version == 4
    assert await rig.orders.put(other, stored)

    await rig.publish(
        order_event(
            ET.ORDER_EVENT_TYPE_DELIVERED, order, other, 6, status=common_pb2.ORDER_STATUS_DELIVERED
        )
    )
    # The relay republishing an old assignment after the delivery must not bring it back.
    await rig.publish(assigned)
    await rig.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, other, 5))
    await rig.handled()
    assert not await redis.exists(rig.orders.fence_key(other))
    assert not await redis.sismember(f"{rig.prefix}:drivers", other)
    assert rig.orders.outdated == 2
    assert await rig.orders.remove(other, order, 6)
    assert not await rig.orders.put(other, stored)
    await rig.detector.on_stored([update(other, MERCHANT, s) for s in range(0, 40, 5)])
    assert await rig.arrivals() == []
    assert not rig.orders.has(other)


async def test_a_failed_publish_keeps_the_arrival_in_the_outbox_until_it_is_published_once(
    start_rig: Callable[..., Awaitable[Rig]],
) -> None:
    a = await start_rig("a")
    redis = a.redis
    driver, order = str(uuid.uuid4()), str(uuid.uuid4())
    await a.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, driver, 3))
    await a.handled()
    outbox = a.orders.outbox_key(driver)
    fired = fired_field(order, ArrivalKind.ARRIVED_AT_MERCHANT)

    # The location stream made a string: every XADD of an arrival fails with WRONGTYPE.
    await redis.set(a.location_stream, "not a stream")
    await a.detector.on_stored([update(driver, MERCHANT, s) for s in range(0, 30, 5)])
    assert (a.detector.published, a.detector.errors) == (0, 1)
    # Claimed and kept in one step: the fired mark and the event in the courier's outbox.
    assert await redis.hexists(a.orders.fence_key(driver), fired)
    assert list(await redis.hkeys(outbox)) == [fired.encode()]
    # The instance dies before any retry, and the courier rides on: no fix will fire it again.
    await a.halt()
    await a.detector.on_stored([update(driver, north_of(MERCHANT, 600), 100, 10)])

    # Redis takes appends again; another instance's relay publishes the event, once.
    await redis.delete(a.location_stream)
    b = await start_rig("b")
    await eventually(lambda: b.detector.relayed == 1)
    [(event, arrival)] = await b.arrivals()
    assert arrival.type == ARRIVED_AT_MERCHANT
    assert (arrival.order_id, arrival.driver_id) == (order, driver)
    assert arrival.occur_time.ToMilliseconds() == T0 + 20_000
    assert (
        event.event_id
        == arrival.event_id
        == event_id(order, driver, ArrivalKind.ARRIVED_AT_MERCHANT)
    )
    assert not await redis.exists(outbox)
    # Back at the shop, and further relay rounds: nothing fires or goes out again.
    await b.detector.on_stored([update(driver, MERCHANT, s) for s in range(200, 260, 5)])
    assert await b.detector.relay() == 0
    assert len(await b.arrivals()) == 1
    assert (b.detector.published, b.detector.already_fired) == (1, 0)


async def test_a_claim_that_cannot_keep_its_event_marks_nothing_and_fires_again_once(
    start_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await start_rig()
    redis = rig.redis
    driver, order = str(uuid.uuid4()), str(uuid.uuid4())
    await rig.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, order, driver, 3))
    await rig.handled()
    outbox = rig.orders.outbox_key(driver)
    fired = fired_field(order, ArrivalKind.ARRIVED_AT_MERCHANT)

    # The outbox made a string: the claim's outbox write fails, and the mark with it.
    await redis.set(outbox, "not a hash")
    await rig.detector.on_stored([update(driver, MERCHANT, s) for s in range(0, 30, 5)])
    assert (rig.detector.published, rig.detector.errors) == (0, 1)
    assert not await redis.hexists(rig.orders.fence_key(driver), fired)
    assert await rig.arrivals() == []

    # Once Redis takes the write, the courier's next fix fires the arrival, once.
    await redis.delete(outbox)
    await rig.detector.on_stored([update(driver, MERCHANT, s) for s in range(30, 60, 5)])
    [(_, arrival)] = await rig.arrivals()
    assert arrival.type == ARRIVED_AT_MERCHANT
    assert rig.detector.published == 1
    assert not await redis.exists(outbox)
    assert await rig.detector.relay() == 0
    assert len(await rig.arrivals()) == 1


# --- the marketplace side -----------------------------------------------------------------


async def _notes(pool: asyncpg.Pool, order_id: str) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT recipient_id::text, type, data->>'event_id' AS event_id FROM notifications"
        " WHERE order_id = $1::uuid ORDER BY id",
        order_id,
    )
    return [(r["recipient_id"], r["type"], r["event_id"]) for r in rows]


async def test_arrivals_become_one_notification_per_party_even_when_delivered_twice(
    stores: Stores,
) -> None:
    pool, redis = stores.pool, stores.redis
    assert pool is not None and redis is not None
    async with _rigs(redis) as start_rig:
        await _deliver_and_notify(await start_rig(), pool, redis)


async def _deliver_and_notify(rig: Rig, pool: asyncpg.Pool, redis: Redis) -> None:
    p = await shop_order(pool, "ready_for_pickup", with_courier=True)
    assert p.driver is not None
    run, stop = build_arrival_notifier(pool, redis, "test", stream=rig.location_stream)
    notifier = asyncio.create_task(run())
    try:
        await rig.publish(order_event(ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, p.order, p.driver, 3))
        await rig.handled()
        await rig.detector.on_stored([update(p.driver, MERCHANT, s) for s in range(0, 30, 5)])
        [(first, _)] = await rig.arrivals()

        async def notified(count: int) -> bool:
            return len(await _notes(pool, p.order)) >= count

        await eventually(lambda: notified(3))
        assert sorted(await _notes(pool, p.order)) == sorted(
            (who, "arrived_at_merchant", first.event_id) for who in (p.customer, p.owner, p.driver)
        )

        # The same event on the stream again (a republish), then the rest of the delivery.
        entries: list[tuple[Any, Any]] = await redis.xrange(rig.location_stream) or []
        [(_, fields)] = entries
        await redis.xadd(rig.location_stream, fields)
        await pool.execute(
            "UPDATE orders SET status = 'picked_up', picked_up_at = now() WHERE id = $1::uuid",
            p.order,
        )
        await rig.publish(
            order_event(
                ET.ORDER_EVENT_TYPE_PICKED_UP,
                p.order,
                p.driver,
                4,
                status=common_pb2.ORDER_STATUS_PICKED_UP,
            )
        )
        await rig.handled()
        await rig.detector.on_stored([update(p.driver, north_of(CUSTOMER, -2000), 100)])
        await rig.detector.on_stored([update(p.driver, north_of(CUSTOMER, -30), 160)])
        await rig.detector.on_stored([update(p.driver, north_of(CUSTOMER, -20), 180)])
        # The stream is consumed in order: once these are in, the duplicate was seen before them.
        await eventually(lambda: notified(9))
        notes = await _notes(pool, p.order)
        assert len(notes) == 9
        for kind in ("arrived_at_merchant", "driver_approaching", "arrived_at_customer"):
            assert sorted(who for who, k, _ in notes if k == kind) == sorted(
                (p.customer, p.owner, p.driver)
            )
        assert [k for _, k, _ in notes[::3]] == [
            "arrived_at_merchant",
            "driver_approaching",
            "arrived_at_customer",
        ]
    finally:
        stop()
        await notifier


async def test_the_notifier_is_idempotent_without_the_streams_dedupe(
    stores: Stores,
) -> None:
    pool = stores.pool
    assert pool is not None
    p = await shop_order(pool, "picked_up", with_courier=True)
    assert p.driver is not None
    notifier = ArrivalNotifier(pool)

    def event(kind: int, event_id: str) -> Event:
        arrival = location_events_pb2.DriverArrivalEvent(
            event_id=event_id,
            driver_id=p.driver,
            order_id=p.order,
            type=kind,  # type: ignore[arg-type]
            position=common_pb2.LatLng(latitude=CUSTOMER[0], longitude=CUSTOMER[1]),
        )
        return Event(
            stream="events:{location}",
            entry_id="1-0",
            event_id=event_id,
            type="location.x",
            aggregate_id=p.order,
            payload=arrival.SerializeToString(),
            occurred_at=datetime.now(UTC),
        )

    arrived = event(ARRIVED_AT_CUSTOMER, uuid.uuid4().hex)
    # Two consumers handling the same entry at once (one claimed it from a slow other), and a
    # redelivery after both.
    await asyncio.gather(notifier.handle(arrived), notifier.handle(arrived))
    await notifier.handle(arrived)
    assert sorted(await _notes(pool, p.order)) == sorted(
        (who, "arrived_at_customer", arrived.event_id) for who in (p.customer, p.owner, p.driver)
    )
    assert (notifier.notified, notifier.skipped) == (1, 2)

    # Stale news and strangers are dropped: the merchant after the pickup, another courier.
    await notifier.handle(event(ARRIVED_AT_MERCHANT, uuid.uuid4().hex))
    stranger = location_events_pb2.DriverArrivalEvent.FromString(arrived.payload)
    stranger.driver_id, stranger.event_id = str(uuid.uuid4()), uuid.uuid4().hex
    await notifier.handle(
        Event("s", "2-0", stranger.event_id, "t", p.order, stranger.SerializeToString(), T0_DT)
    )
    await notifier.handle(Event("s", "3-0", "x", "t", p.order, b"\xff\xff", T0_DT))
    assert len(await _notes(pool, p.order)) == 3
    assert notifier.skipped == 5
