"""The transactional outbox against a real PostgreSQL and Redis: append, relay, consume."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from delivery.order.v1 import order_events_pb2
from mesh.events import (
    Event,
    EventConsumer,
    dead_letter_stream,
    decode_entry,
    ensure_group,
    stream_for,
)
from mesh.stores import Stores
from order_svc.relay import OutboxRelay
from order_svc.store.outbox import OutboxEvent, append_event, append_events
from tests.polling import eventually


def _unique_type() -> str:
    # Test runs share one Redis: a stream of their own keeps them apart.
    return f"test_{uuid.uuid4().hex[:12]}"


def _event(aggregate_type: str, order_id: str | None = None) -> OutboxEvent:
    order_id = order_id or str(uuid.uuid4())
    payload = order_events_pb2.OrderEvent(
        order_id=order_id, type=order_events_pb2.ORDER_EVENT_TYPE_CREATED
    ).SerializeToString()
    return OutboxEvent(
        aggregate_type=aggregate_type,
        aggregate_id=order_id,
        event_type="order.created",
        payload=payload,
        headers={"request_id": f"req-{order_id[:8]}"},
    )


async def _commit(stores: Stores, events: list[OutboxEvent]) -> list[int]:
    assert stores.pool is not None
    async with stores.pool.acquire() as conn, conn.transaction():
        return await append_events(conn, events)


async def _drain(relay: OutboxRelay) -> None:
    """Relays batches until the outbox has nothing left to publish."""
    while await relay.relay_once():
        pass


async def _stream(redis: Redis, stream: str) -> list[Event]:
    entries: list[tuple[Any, Any]] = await redis.xrange(stream) or []
    return [decode_entry(stream, entry_id, fields) for entry_id, fields in entries]


async def _unpublished(stores: Stores, aggregate_type: str) -> int:
    assert stores.pool is not None
    count = await stores.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_type = $1 AND published_at IS NULL",
        aggregate_type,
    )
    assert isinstance(count, int)
    return count


@contextlib.asynccontextmanager
async def _running(consumer: EventConsumer | OutboxRelay) -> AsyncIterator[None]:
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        consumer.stop()
        await task


@pytest.fixture
def relay(stores: Stores) -> OutboxRelay:
    assert stores.pool is not None and stores.redis is not None
    return OutboxRelay(stores.pool, stores.redis, batch_size=500)


@pytest.fixture
def redis(stores: Stores) -> Redis:
    assert stores.redis is not None
    return stores.redis


async def test_events_of_a_rolled_back_transaction_are_never_published(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    assert stores.pool is not None
    async with stores.pool.acquire() as conn:
        with contextlib.suppress(LookupError):
            async with conn.transaction():
                rolled_back = _event(aggregate_type)
                await append_event(
                    conn,
                    aggregate_type=aggregate_type,
                    aggregate_id=rolled_back.aggregate_id,
                    event_type=rolled_back.event_type,
                    payload=rolled_back.payload,
                )
                raise LookupError("the order change failed after the event was appended")
        async with conn.transaction():
            committed = _event(aggregate_type)
            committed_id = await append_event(
                conn,
                aggregate_type=aggregate_type,
                aggregate_id=committed.aggregate_id,
                event_type=committed.event_type,
                payload=committed.payload,
            )

    await _drain(relay)

    entries = await _stream(redis, stream_for(aggregate_type))
    assert [e.event_id for e in entries] == [str(committed_id)]
    assert entries[0].aggregate_id == committed.aggregate_id
    count = await stores.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_type = $1", aggregate_type
    )
    assert count == 1


async def test_committed_events_are_published_once_in_id_order_and_marked(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    events = [_event(aggregate_type) for _ in range(5)]
    ids = await _commit(stores, events[:3]) + await _commit(stores, events[3:])
    assert ids == sorted(ids)

    await _drain(relay)
    await _drain(relay)  # A second pass finds nothing more to publish.

    entries = await _stream(redis, stream_for(aggregate_type))
    assert [e.event_id for e in entries] == [str(i) for i in ids]
    for entry, event in zip(entries, events, strict=True):
        assert entry.type == "order.created"
        assert entry.aggregate_id == event.aggregate_id
        assert entry.payload == event.payload
        assert entry.headers == event.headers
        decoded = order_events_pb2.OrderEvent.FromString(entry.payload)
        assert decoded.order_id == event.aggregate_id
    assert stores.pool is not None
    rows = await stores.pool.fetch(
        "SELECT id, created_at, published_at, publish_attempts, last_error FROM outbox"
        " WHERE aggregate_type = $1 ORDER BY id",
        aggregate_type,
    )
    assert [r["id"] for r in rows] == ids
    for row, entry in zip(rows, entries, strict=True):
        assert row["published_at"] is not None
        assert row["publish_attempts"] == 1
        assert row["last_error"] is None
        assert entry.occurred_at == row["created_at"]


async def test_a_consumer_group_receives_every_event_and_acks_it(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    stream, group = stream_for(aggregate_type), "tracking"
    await ensure_group(redis, stream, group)
    await ensure_group(redis, stream, group)  # An existing group is left as it is.
    ids = await _commit(stores, [_event(aggregate_type) for _ in range(20)])
    await _drain(relay)
    seen: list[str] = []

    async def handle(event: Event) -> None:
        seen.append(event.event_id)

    consumer = EventConsumer(redis, stream, group, "c1", handle, batch_size=7, block_s=0.05)
    async with _running(consumer):
        await eventually(lambda: len(seen) == len(ids))

    assert seen == [str(i) for i in ids]
    assert consumer.handled == len(ids) and consumer.duplicates == 0
    assert (await redis.xpending(stream, group))["pending"] == 0


async def test_an_event_whose_handler_crashed_is_delivered_again_on_restart(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    stream, group = stream_for(aggregate_type), f"g_{uuid.uuid4().hex[:8]}"
    await ensure_group(redis, stream, group)
    ids = [str(i) for i in await _commit(stores, [_event(aggregate_type) for _ in range(5)])]
    await _drain(relay)
    crash_on = ids[2]
    first_run: list[str] = []

    async def crashing(event: Event) -> None:
        if event.event_id == crash_on:
            raise RuntimeError("the handler's database went away")
        first_run.append(event.event_id)

    # A long retry delay: the first consumer must not retry by itself before it is stopped.
    consumer = EventConsumer(redis, stream, group, "c1", crashing, block_s=0.05, retry_delay_s=60)
    async with _running(consumer):
        await eventually(lambda: consumer.failures == 1)
    assert first_run == ids[:2]
    pending = await redis.xpending_range(stream, group, min="-", max="+", count=10)
    assert [p["consumer"] for p in pending] == [b"c1"] * 3  # The crashed event and the rest.

    second_run: list[str] = []

    async def healthy(event: Event) -> None:
        second_run.append(event.event_id)

    restarted = EventConsumer(redis, stream, group, "c1", healthy, block_s=0.05)
    async with _running(restarted):
        await eventually(lambda: len(second_run) == 3)
    assert second_run == ids[2:]
    assert (await redis.xpending(stream, group))["pending"] == 0


async def test_a_republished_event_is_a_no_op_for_a_group_that_processed_it(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    stream, group = stream_for(aggregate_type), f"g_{uuid.uuid4().hex[:8]}"
    await ensure_group(redis, stream, group)
    ids = [str(i) for i in await _commit(stores, [_event(aggregate_type) for _ in range(3)])]
    await _drain(relay)
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.event_id)

    consumer = EventConsumer(redis, stream, group, "c1", handle, block_s=0.05)
    async with _running(consumer):
        await eventually(lambda: len(handled) == 3)
        # What a relay killed after XADD but before its commit leaves behind: the row is
        # unpublished again, and the next relay publishes it a second time.
        assert stores.pool is not None
        await stores.pool.execute(
            "UPDATE outbox SET published_at = NULL WHERE id = $1", int(ids[1])
        )
        await _drain(relay)
        await eventually(lambda: consumer.duplicates == 1)

    entries = await _stream(redis, stream)
    assert [e.event_id for e in entries] == [*ids, ids[1]]
    assert handled == ids
    assert consumer.handled == 3
    assert (await redis.xpending(stream, group))["pending"] == 0


async def test_entries_left_pending_by_a_dead_consumer_are_claimed(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    stream, group = stream_for(aggregate_type), f"g_{uuid.uuid4().hex[:8]}"
    await ensure_group(redis, stream, group)
    ids = [str(i) for i in await _commit(stores, [_event(aggregate_type) for _ in range(4)])]
    await _drain(relay)
    # A consumer that read the entries and died before acknowledging any of them.
    await redis.xreadgroup(group, "dead", {stream: ">"}, count=10)
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.event_id)

    # Idle for 0 ms is old enough: the dead consumer will never come back for them.
    consumer = EventConsumer(redis, stream, group, "alive", handle, block_s=0.05, claim_idle_s=0)
    async with _running(consumer):
        await eventually(lambda: len(handled) == 4)
    assert handled == ids
    assert (await redis.xpending(stream, group))["pending"] == 0


async def test_skip_locked_leaves_rows_another_relay_holds(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    ids = await _commit(stores, [_event(aggregate_type) for _ in range(6)])
    held, free = ids[:3], ids[3:]
    assert stores.pool is not None
    async with stores.pool.acquire() as other_relay, other_relay.transaction():
        await other_relay.execute("SELECT id FROM outbox WHERE id = ANY($1) FOR UPDATE", held)
        await relay.relay_once()
        published = await _stream(redis, stream_for(aggregate_type))
        assert [e.event_id for e in published] == [str(i) for i in free]
    await _drain(relay)
    published = await _stream(redis, stream_for(aggregate_type))
    assert sorted(int(e.event_id) for e in published) == ids


async def test_two_relays_running_at_once_publish_each_event_exactly_once(
    stores: Stores, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    ids: list[int] = []
    for _ in range(10):
        ids += await _commit(stores, [_event(aggregate_type) for _ in range(200)])
    assert stores.pool is not None
    relays = [OutboxRelay(stores.pool, redis, batch_size=50, idle_sleep_s=0.01) for _ in range(2)]
    async with _running(relays[0]), _running(relays[1]):
        await eventually(lambda: _unpublished_is_zero(stores, aggregate_type))
    published = [int(e.event_id) for e in await _stream(redis, stream_for(aggregate_type))]
    assert len(published) == len(ids)
    assert sorted(published) == ids
    assert all(r.errors == 0 for r in relays)


async def _unpublished_is_zero(stores: Stores, aggregate_type: str) -> bool:
    return await _unpublished(stores, aggregate_type) == 0


async def test_a_failed_publish_rolls_back_and_a_later_relay_publishes(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    ids = await _commit(stores, [_event(aggregate_type) for _ in range(3)])
    assert stores.pool is not None
    # A port bound but never listened on refuses every connection: Redis is down.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        down = Redis.from_url(f"redis://127.0.0.1:{closed_port.getsockname()[1]}/0")
        try:
            broken = OutboxRelay(stores.pool, down, batch_size=10_000)
            with pytest.raises(Exception, match=r"(?i)connect"):
                await broken.relay_once()
        finally:
            await down.aclose()
    rows = await stores.pool.fetch(
        "SELECT published_at, publish_attempts, last_error FROM outbox WHERE id = ANY($1)", ids
    )
    assert all(r["published_at"] is None for r in rows)
    assert all(r["publish_attempts"] == 1 and r["last_error"] for r in rows)

    await _drain(relay)
    published = await _stream(redis, stream_for(aggregate_type))
    assert [int(e.event_id) for e in published] == ids
    assert await _unpublished(stores, aggregate_type) == 0


async def _outbox_row(stores: Stores, row_id: int) -> Any:
    assert stores.pool is not None
    return await stores.pool.fetchrow(
        "SELECT published_at, publish_attempts, failures, parked_at, last_error"
        " FROM outbox WHERE id = $1",
        row_id,
    )


async def test_a_row_that_cannot_be_published_is_parked_and_the_rows_behind_it_go_on(
    stores: Stores, redis: Redis
) -> None:
    assert stores.pool is not None and stores.redis is not None
    relay = OutboxRelay(stores.pool, stores.redis, batch_size=500, max_row_failures=3)
    aggregate_type = _unique_type()
    # A stream name with braces cannot be built: no retry makes this row publishable.
    (poison,) = await _commit(stores, [_event("bad{" + aggregate_type + "}")])
    behind = await _commit(stores, [_event(aggregate_type) for _ in range(3)])

    assert await relay.relay_once() >= 4
    # The rows behind the poison one were published by the same batch.
    entries = await _stream(redis, stream_for(aggregate_type))
    assert [int(e.event_id) for e in entries] == behind
    row = await _outbox_row(stores, poison)
    assert row["published_at"] is None and row["parked_at"] is None
    assert row["failures"] == 1 and "invalid aggregate type" in row["last_error"]

    await _drain(relay)
    row = await _outbox_row(stores, poison)
    assert row["published_at"] is None
    assert row["parked_at"] is not None and row["failures"] == 3
    assert relay.parked == 1
    # Parked rows are skipped: later events are published at once.
    later = await _commit(stores, [_event(aggregate_type)])
    assert await relay.relay_once() == 1
    entries = await _stream(redis, stream_for(aggregate_type))
    assert [int(e.event_id) for e in entries] == behind + later
    assert (await _outbox_row(stores, poison))["failures"] == 3


async def test_an_entry_redis_refuses_fails_alone_and_a_redis_outage_parks_nothing(
    stores: Stores, redis: Redis
) -> None:
    assert stores.pool is not None and stores.redis is not None
    relay = OutboxRelay(stores.pool, stores.redis, batch_size=500, max_row_failures=2)
    refused_type, fine_type = _unique_type(), _unique_type()
    # A key of the wrong type where the stream should be: Redis refuses that entry only.
    await redis.set(stream_for(refused_type), b"not a stream")
    try:
        (refused,) = await _commit(stores, [_event(refused_type)])
        fine = await _commit(stores, [_event(fine_type)])
        await _drain(relay)
        assert [int(e.event_id) for e in await _stream(redis, stream_for(fine_type))] == fine
        row = await _outbox_row(stores, refused)
        assert row["parked_at"] is not None and "WRONGTYPE" in row["last_error"]
    finally:
        await redis.delete(stream_for(refused_type))

    # Redis down fails whole batches: recorded on the rows, but never counted toward parking.
    ids = await _commit(stores, [_event(fine_type)])
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        down = Redis.from_url(f"redis://127.0.0.1:{closed_port.getsockname()[1]}/0")
        try:
            broken = OutboxRelay(stores.pool, down, batch_size=10_000, max_row_failures=1)
            for _ in range(3):
                with pytest.raises(Exception, match=r"(?i)connect"):
                    await broken.relay_once()
        finally:
            await down.aclose()
    row = await _outbox_row(stores, ids[0])
    assert row["parked_at"] is None and row["failures"] == 0 and row["publish_attempts"] == 3
    await _drain(relay)
    assert (await _outbox_row(stores, ids[0]))["published_at"] is not None


async def test_an_event_that_always_fails_goes_to_the_dead_letter_stream_and_the_group_goes_on(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    ids = await _commit(stores, [_event(aggregate_type) for _ in range(4)])
    await _drain(relay)
    stream, group = stream_for(aggregate_type), "g"
    await ensure_group(redis, stream, group)
    poison = str(ids[1])
    handled: list[str] = []
    tried: list[str] = []

    async def handle(event: Event) -> None:
        tried.append(event.event_id)
        if event.event_id == poison:
            raise RuntimeError("this handler can never handle this event")
        handled.append(event.event_id)

    consumer = EventConsumer(
        redis, stream, group, "c1", handle, block_s=0.05, retry_delay_s=0.01, max_attempts=3
    )
    # A second consumer of the group, there to claim anything left idle: it must get nothing.
    other = EventConsumer(
        redis, stream, group, "c2", handle, block_s=0.05, claim_idle_s=0.0, claim_every_s=0.01
    )
    async with _running(consumer):
        await eventually(lambda: len(handled) == 3)
    async with _running(other):
        await asyncio.sleep(0.2)

    # Every other event was handled, in order, and the poison one tried exactly max_attempts.
    assert handled == [str(i) for i in ids if str(i) != poison]
    assert tried.count(poison) == 3
    assert consumer.dead_lettered == 1 and other.handled == 0
    assert (await redis.xpending(stream, group))["pending"] == 0
    dead = await redis.xrange(dead_letter_stream(stream))
    assert len(dead) == 1
    fields = {k.decode(): v for k, v in dead[0][1].items()}
    assert fields["event_id"] == poison.encode()
    assert fields["dead_group"] == b"g" and fields["dead_attempts"] == b"3"
    assert b"can never handle" in fields["dead_error"]
    # The dead-letter entry is the event itself: it decodes like any other.
    assert decode_entry(stream, dead[0][0], dead[0][1]).event_id == poison


async def test_a_dependency_outage_is_retried_past_the_attempt_limit_not_dead_lettered(
    stores: Stores, relay: OutboxRelay, redis: Redis
) -> None:
    aggregate_type = _unique_type()
    ids = await _commit(stores, [_event(aggregate_type)])
    await _drain(relay)
    stream, group = stream_for(aggregate_type), "g"
    await ensure_group(redis, stream, group)
    outage = 6  # More failures than max_attempts: a store down for a while.
    handled: list[str] = []

    async def handle(event: Event) -> None:
        nonlocal outage
        if outage:
            outage -= 1
            raise ConnectionRefusedError("the store is down")
        handled.append(event.event_id)

    consumer = EventConsumer(
        redis, stream, group, "c1", handle, block_s=0.05, retry_delay_s=0.01, max_attempts=2
    )
    async with _running(consumer):
        await eventually(lambda: handled == [str(ids[0])])
    assert consumer.failures == 6 and consumer.dead_lettered == 0
    assert await redis.xlen(dead_letter_stream(stream)) == 0
