"""GPS ingest hardening over real gRPC, Redis and PostgreSQL: fixes that are no positions, a
wrong anchor, acks of dropped fixes, Redis writes that fail, bounded queues, a history writer
that lives through errors, and a courier whose app went away."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from location_svc.domain.fixes import Fix
from location_svc.domain.presence import DriverStatus
from location_svc.ingest import Ingest, Update
from location_svc.server import build_server as build_location
from location_svc.service import LocationPolicy
from location_svc.store.driver_index import DriverIndex
from location_svc.store.drivers import DriverStore, driver_key, position_key
from location_svc.store.geo_index import shard_of
from location_svc.store.history import HistoryWriter, history_row
from matching_svc.dispatcher import DispatchRules
from matching_svc.server import build_server as build_matching
from mesh.auth import Role, SessionStore
from mesh.embedded import free_port
from mesh.events import stream_for
from mesh.geo import EARTH_RADIUS_M
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores, open_stores
from mesh.testing import bearer, service_metadata, serving, settings_for_test
from tests.integration.rows import courier, shop_order
from tests.polling import eventually

OUT_OF_RANGE = location_pb2.FIX_DROP_REASON_OUT_OF_RANGE
IMPOSSIBLE_SPEED = location_pb2.FIX_DROP_REASON_IMPOSSIBLE_SPEED


def _spot() -> tuple[float, float]:
    """Somewhere random, so parallel tests never see each other's couriers."""
    return random.uniform(-55, 55), random.uniform(-170, 170)


def _north(lat: float, lng: float, metres: float) -> tuple[float, float]:
    return lat + math.degrees(metres / EARTH_RADIUS_M), lng


def _now() -> int:
    return int(time.time() * 1000)


def _fix(
    lat: float,
    lng: float,
    ms: int,
    seq: int = 0,
    *,
    heading: float = 0.0,
    speed: float = 5.0,
) -> location_pb2.LocationFix:
    fix = location_pb2.LocationFix(
        position=common_pb2.LatLng(latitude=lat, longitude=lng),
        accuracy_meters=8.0,
        heading_degrees=heading,
        speed_mps=speed,
        sequence=seq,
    )
    fix.device_time.FromMilliseconds(ms)
    return fix


@dataclass
class World:
    stores: Stores
    settings: Settings
    location: location_service_pb2_grpc.LocationServiceStub

    @property
    def service(self) -> tuple[tuple[str, str], ...]:
        return service_metadata(self.settings, "matching")

    async def courier(self, *, available: bool = True) -> tuple[str, tuple[tuple[str, str], ...]]:
        """A courier with a session: their id and call metadata."""
        assert self.stores.pool is not None and self.stores.redis is not None
        async with self.stores.pool.acquire() as conn:
            driver = await courier(conn)
        sessions = SessionStore(
            self.stores.redis, ttl_s=600, service_secret=self.settings.auth.service_secret
        )
        metadata = bearer(await sessions.create(driver, Role.DRIVER))
        if available:
            await self.location.SetAvailability(
                location_service_pb2.SetAvailabilityRequest(
                    status=common_pb2.DRIVER_STATUS_AVAILABLE
                ),
                metadata=metadata,
            )
        return driver, metadata

    async def where(self, driver: str) -> location_pb2.DriverLocation:
        reply = await self.location.GetDriverLocation(
            location_service_pb2.GetDriverLocationRequest(driver_id=driver), metadata=self.service
        )
        return reply.location

    async def nearby(self, lat: float, lng: float) -> list[str]:
        reply = await self.location.FindNearbyDrivers(
            location_service_pb2.FindNearbyDriversRequest(
                center=common_pb2.LatLng(latitude=lat, longitude=lng),
                radius_meters=2000,
                limit=10,
            ),
            metadata=self.service,
        )
        return [d.driver_id for d in reply.drivers]

    async def report(
        self, metadata: tuple[tuple[str, str], ...], *fixes: location_pb2.LocationFix
    ) -> location_service_pb2.ReportLocationsResponse:
        return await self.location.ReportLocations(
            location_service_pb2.ReportLocationsRequest(fixes=list(fixes)), metadata=metadata
        )


class Stream:
    """A courier's StreamLocation, driven message by message."""

    def __init__(self, world: World, metadata: tuple[tuple[str, str], ...]) -> None:
        self._queue: asyncio.Queue[location_service_pb2.StreamLocationRequest | None] = (
            asyncio.Queue()
        )
        self.call = world.location.StreamLocation(self._requests(), metadata=metadata)

    async def _requests(self) -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def send(self, fix: location_pb2.LocationFix) -> None:
        await self._queue.put(location_service_pb2.StreamLocationRequest(fix=fix))

    async def ack(self) -> location_service_pb2.StreamLocationResponse:
        return await asyncio.wait_for(self.call.read(), 10)

    async def ack_up_to(self, sequence: int) -> location_service_pb2.StreamLocationResponse:
        """Reads acks until one acknowledges ``sequence``."""
        while (ack := await self.ack()).acked_sequence < sequence:
            pass
        return ack

    async def close(self) -> None:
        await self._queue.put(None)


@contextlib.asynccontextmanager
async def _world(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[World]:
    settings = settings_for_test("location", store_settings)
    async with serving(build_location, settings, stores) as (_, channel):
        yield World(stores, settings, location_service_pb2_grpc.LocationServiceStub(channel))


@pytest.fixture
async def world(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[World]:
    async with _world(store_settings, stores) as made:
        yield made


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, which it may starve or freeze."""
    port = free_port()
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis as sync_redis

        client = sync_redis.Redis(port=port)
        while True:
            try:
                client.ping()
                break
            except sync_redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait()


# --- 1: Null Island and a wrong anchor -----------------------------------------------------


async def test_a_first_fix_at_null_island_is_dropped_and_the_true_one_files_the_courier(
    world: World,
) -> None:
    driver, metadata = await world.courier()
    lat, lng = _spot()
    now = _now()
    stream = Stream(world, metadata)
    await stream.send(_fix(0.0, 0.0, now - 3_000, 1))
    ack = await stream.ack()
    assert (ack.accepted_count, ack.dropped_count, ack.last_drop_reason) == (0, 1, OUT_OF_RANGE)
    await stream.send(_fix(lat, lng, now - 2_000, 2))
    ack = await stream.ack_up_to(2)
    assert (ack.accepted_count, ack.dropped_count) == (1, 1)
    assert driver in await world.nearby(lat, lng)
    assert (await world.where(driver)).position.latitude == pytest.approx(lat)
    reply = await world.report(metadata, _fix(0.0, 0.0, now - 1_000))
    assert [(d.index, d.reason) for d in reply.dropped] == [(0, OUT_OF_RANGE)]
    await stream.close()
    assert await stream.call.code() == grpc.StatusCode.OK


async def test_fixes_that_agree_among_themselves_leave_a_wrong_first_fix_on_the_stream(
    world: World,
) -> None:
    driver, metadata = await world.courier()
    lat, lng = _spot()
    now = _now()
    stream = Stream(world, metadata)
    # A cached position 400 km away, then the courier's true track, a fix every 2 s.
    await stream.send(_fix(*_north(lat, lng, 400_000), now - 30_000, 1))
    await stream.ack_up_to(1)
    for i in range(6):
        await stream.send(_fix(*_north(lat, lng, 10 * i), now - 20_000 + 2_000 * i, 2 + i))
    ack = await stream.ack_up_to(7)
    # Three jumps in a row over 4 s are dropped; the fourth (6 s) is believed, and the rest.
    assert (ack.accepted_count, ack.dropped_count) == (4, 3)
    assert ack.last_drop_reason == IMPOSSIBLE_SPEED
    assert (await world.where(driver)).position.latitude == pytest.approx(_north(lat, lng, 50)[0])
    assert driver in await world.nearby(lat, lng)
    await stream.close()


async def test_fixes_that_agree_leave_a_wrong_anchor_one_batch_at_a_time(world: World) -> None:
    driver, metadata = await world.courier()
    lat, lng = _spot()
    now = _now()
    assert (await world.report(metadata, _fix(0.0, 100.0, now - 30_000))).accepted_count == 1
    verdicts = []
    for i in range(5):
        reply = await world.report(
            metadata, _fix(*_north(lat, lng, 10 * i), now - 20_000 + 2_000 * i)
        )
        verdicts.append([d.reason for d in reply.dropped] or reply.accepted_count)
    assert verdicts == [[IMPOSSIBLE_SPEED]] * 3 + [1, 1]
    assert driver in await world.nearby(lat, lng)


# --- 2: headings, speeds and coordinates that are no readings --------------------------------


async def test_a_heading_or_speed_that_is_no_reading_is_kept_as_not_known(world: World) -> None:
    driver, metadata = await world.courier()
    lat, lng = _spot()
    now = _now()
    readings = [
        (math.nan, 5.0, -1.0, 5.0),
        (-math.inf, 5.0, -1.0, 5.0),
        (720.0, 5.0, -1.0, 5.0),
        (90.0, math.inf, 90.0, -1.0),
        (90.0, -50.0, 90.0, -1.0),
        (90.0, 3e38, 90.0, -1.0),
        (359.5, 3.0, 359.5, 3.0),
    ]
    stream = Stream(world, metadata)
    for seq, (heading, speed, shown_heading, shown_speed) in enumerate(readings, start=1):
        fix = _fix(*_north(lat, lng, seq), now - 20_000 + 1_000 * seq, seq)
        fix.heading_degrees, fix.speed_mps = heading, speed
        await stream.send(fix)
        ack = await stream.ack_up_to(seq)
        assert (ack.accepted_count, ack.dropped_count) == (seq, 0)
        where = await world.where(driver)
        assert (where.heading_degrees, where.speed_mps) == (shown_heading, shown_speed)
    # Coordinates that are no place are dropped, the stream goes on.
    bad = [(math.nan, lng), (lat, math.inf), (-math.inf, lng), (91.0, lng), (lat, -181.0)]
    for seq, (a, b) in enumerate(bad, start=len(readings) + 1):
        await stream.send(_fix(a, b, now - 10_000 + seq, seq))
        ack = await stream.ack_up_to(seq)
        assert (ack.dropped_count, ack.last_drop_reason) == (seq - len(readings), OUT_OF_RANGE)
    await stream.close()
    assert await stream.call.code() == grpc.StatusCode.OK
    # A batch: a backfilled fix and two live ones, with the same kinds of non-readings.
    reply = await world.report(
        metadata,
        _fix(lat, lng, now - 60_000, heading=math.nan, speed=math.inf),
        _fix(*_north(lat, lng, 20), now - 2_000, heading=-math.inf, speed=3e38),
        _fix(*_north(lat, lng, 21), now - 1_000, heading=1e9, speed=-math.inf),
    )
    assert (reply.accepted_count, reply.backfilled_count, len(reply.dropped)) == (2, 1, 0)
    where = await world.where(driver)
    assert (where.heading_degrees, where.speed_mps) == (-1.0, -1.0)
    # Nothing that is not finite reached Redis or the history.
    redis, pool = world.stores.redis, world.stores.pool
    assert redis is not None and pool is not None
    packed = await redis.hget(position_key(shard_of(lat, lng)), driver)  # type: ignore[misc]
    assert packed is not None and b"nan" not in packed.lower() and b"inf" not in packed.lower()
    rows: list[asyncpg.Record] = []

    async def all_written() -> bool:
        nonlocal rows
        rows = await pool.fetch(
            "SELECT lat, lng, heading_deg, speed_mps FROM driver_location_history"
            " WHERE driver_id = $1::uuid",
            driver,
        )
        return len(rows) == len(readings) + 3

    await eventually(all_written, every_s=0.05)
    for row in rows:
        assert all(math.isfinite(v) for v in row.values())
        assert row["heading_deg"] == -1 or 0 <= row["heading_deg"] < 360
        assert row["speed_mps"] == -1 or 0 <= row["speed_mps"] < 70


# --- 3: acks cover dropped fixes -----------------------------------------------------------


async def test_the_ack_covers_dropped_fixes(world: World) -> None:
    _, metadata = await world.courier()
    lat, lng = _spot()
    now = _now()
    stream = Stream(world, metadata)
    await stream.send(_fix(0.0, 0.0, now - 5_000, 1))
    assert (await stream.ack()).acked_sequence == 1
    await stream.send(_fix(lat, lng, now - 4_000, 2))
    await stream.ack_up_to(2)
    # A repeat of the same time, then an impossible place: each processed, each acked.
    await stream.send(_fix(lat, lng, now - 4_000, 3))
    ack = await stream.ack()
    assert (ack.acked_sequence, ack.dropped_count) == (3, 2)
    await stream.send(_fix(95.0, lng, now - 3_000, 4))
    ack = await stream.ack()
    assert (ack.acked_sequence, ack.dropped_count, ack.accepted_count) == (4, 3, 1)
    await stream.close()


# --- 4: a write that fails -----------------------------------------------------------------


async def test_a_fix_whose_write_failed_is_taken_when_sent_again_and_nothing_freezes(
    store_settings: StoreSettings,
    stores: Stores,
    private_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, _ = private_redis
    settings = replace(store_settings, redis_url=url)
    async with (
        open_stores(settings, postgres=False) as opened,
        _world(settings, Stores(pool=stores.pool, redis=opened.redis)) as world,
    ):
        redis = opened.redis
        assert redis is not None
        driver, metadata = await world.courier()
        lat, lng = _spot()
        there = _north(lat, lng, 25_000)
        assert shard_of(lat, lng) != shard_of(*there)
        now = _now()
        stream = Stream(world, metadata)
        await stream.send(_fix(lat, lng, now - 900_000, 1))
        await stream.ack_up_to(1)

        async def oom_errors() -> int:
            stats = await redis.info("errorstats")
            return int(stats.get("errorstat_OOM", {}).get("count", 0))

        # Redis refuses every write (out of memory); reads still work.
        before = await oom_errors()
        await redis.config_set("maxmemory", "1")
        try:
            await stream.send(_fix(*there, now - 300_000, 2))

            async def refused() -> bool:
                return await oom_errors() > before

            await eventually(refused, every_s=0.05)
        finally:
            await redis.config_set("maxmemory", "0")
        # The app never got its ack and sends the fix again: taken, not a repeat.
        await stream.send(_fix(*there, now - 300_000, 2))
        ack = await stream.ack_up_to(2)
        assert (ack.accepted_count, ack.dropped_count) == (2, 0)
        assert (await world.where(driver)).position.latitude == pytest.approx(there[0])
        # The next fix in the same shard shows too (the courier's shard pointer moved with it).
        step = _north(*there, 30)
        await stream.send(_fix(*step, now - 290_000, 3))
        await stream.ack_up_to(3)
        assert (await world.where(driver)).position.latitude == pytest.approx(step[0])
        assert driver in await world.nearby(*there)
        assert driver not in await world.nearby(lat, lng)
        await stream.close()
        # A batch whose fix cannot be stored is refused as UNAVAILABLE and changes nothing:
        # sent again, it is taken.
        batch = _fix(*_north(*there, 40), now - 280_000)
        await redis.config_set("maxmemory", "1")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await world.report(metadata, batch)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await redis.config_set("maxmemory", "0")
        assert (await world.report(metadata, batch)).accepted_count == 1
        assert (await world.where(driver)).position.latitude == pytest.approx(
            batch.position.latitude
        )


# --- 5: bounded queues, a history writer that lives ------------------------------------------


async def test_the_ingest_queue_is_bounded_while_redis_is_frozen(
    stores: Stores, private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, process = private_redis
    assert stores.pool is not None
    async with open_stores(StoreSettings(redis_url=url), postgres=False) as opened:
        redis = opened.redis
        assert redis is not None
        ingest = Ingest(
            redis, DriverIndex(redis), DriverStore(redis, stores.pool), HistoryWriter(stores.pool)
        )
        ingest.max_pending = 50
        running = asyncio.create_task(ingest.run())
        lat, lng = _spot()
        shard = shard_of(lat, lng)
        most = 0

        def update(i: int) -> Update:
            fix = Fix(lat, lng, 5.0, 0.0, 0.0, _now(), i)
            return Update(
                f"frozen-{i}",
                fix,
                DriverStatus.OFFLINE,
                "car",
                "",
                "",
                fix.device_time_ms,
                None,
                shard,
            )

        async def produce() -> None:
            nonlocal most
            for i in range(200):
                if ingest.full:
                    await ingest.room()
                ingest.submit(update(i))
                most = max(most, ingest.queued)

        try:
            os.kill(process.pid, signal.SIGSTOP)
            ingest.submit(update(1000))
            # The tick took it and hangs on the frozen Redis.
            await eventually(lambda: ingest.queued == 0)
            producer = asyncio.create_task(produce())
            await eventually(lambda: ingest.stats.waits > 0)
            assert ingest.queued == 50 and not producer.done()
            os.kill(process.pid, signal.SIGCONT)
            await producer
            await eventually(lambda: ingest.stats.fixes == 201)
            assert most <= 50
        finally:
            os.kill(process.pid, signal.SIGCONT)
            ingest.stop()
            await running


def _row(driver: str, seconds_ago: float) -> tuple:  # type: ignore[type-arg]
    fix = Fix(60.17, 24.94, 5.0, -1.0, -1.0, int((time.time() - seconds_ago) * 1000), 0)
    return history_row(driver, fix, datetime.now(UTC), backfilled=False)


async def _history_of(pool: asyncpg.Pool, driver: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM driver_location_history WHERE driver_id = $1::uuid", driver
        )
    )


async def test_the_history_buffer_is_bounded_and_keeps_the_newest(stores: Stores) -> None:
    assert stores.pool is not None
    writer = HistoryWriter(stores.pool, max_rows=10, max_buffered=100)
    await writer.ensure_partitions()
    driver = str(uuid.uuid4())
    for i in range(250):
        writer.add(_row(driver, 250 - i))
    assert writer.buffered <= 100 and writer.lost + writer.buffered == 250
    kept = writer.buffered
    while writer.buffered:
        await writer.flush()
    assert await _history_of(stores.pool, driver) == kept
    newest = await stores.pool.fetchval(
        "SELECT max(recorded_at) FROM driver_location_history WHERE driver_id = $1::uuid", driver
    )
    assert abs(newest.timestamp() - (time.time() - 1)) < 60


async def test_the_history_writer_lives_through_a_row_it_cannot_write(stores: Stores) -> None:
    assert stores.pool is not None
    writer = HistoryWriter(stores.pool, flush_interval_s=0.05)
    running = asyncio.create_task(writer.run())
    try:
        writer.add(_row("not-a-uuid", 1))
        await eventually(lambda: writer.lost >= 1 or running.done())
        assert not running.done() and writer.errors >= 1
        driver = str(uuid.uuid4())
        writer.add(_row(driver, 1))

        async def written() -> bool:
            return await _history_of(stores.pool, driver) == 1  # type: ignore[arg-type]

        await eventually(written, every_s=0.05)
    finally:
        writer.stop()
        await running


class _Gate:
    """A loopback port that forwards to PostgreSQL while open and refuses while shut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.port = free_port()
        self._target = target
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_history_waits_for_postgresql_to_come_back_and_loses_nothing(
    stores: Stores, store_settings: StoreSettings
) -> None:
    from urllib.parse import urlparse

    target = urlparse(store_settings.database_url)
    gate = _Gate((target.hostname or "127.0.0.1", target.port or 5432))
    dsn = store_settings.database_url.replace(
        f"{target.hostname}:{target.port}", f"127.0.0.1:{gate.port}"
    )
    assert stores.pool is not None
    await HistoryWriter(stores.pool).ensure_partitions()
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1)
    writer = HistoryWriter(pool, flush_interval_s=0.05, max_backoff_s=0.2)
    # Partitions are there (made above): the writer's own attempt may fail like the rows.
    running = asyncio.create_task(writer.run())
    driver = str(uuid.uuid4())
    try:
        for i in range(20):
            writer.add(_row(driver, 20 - i))
        await eventually(lambda: writer.errors >= 2)
        assert writer.buffered == 20 and writer.lost == 0
        await gate.open()

        async def written() -> bool:
            return await _history_of(stores.pool, driver) == 20  # type: ignore[arg-type]

        await eventually(written, every_s=0.05)
        assert writer.lost == 0
    finally:
        writer.stop()
        await running
        await pool.close()
        await gate.close()


# --- 6: a courier whose app went away is offered nothing -----------------------------------


async def test_an_order_goes_first_to_the_courier_whose_app_is_still_there(
    store_settings: StoreSettings, stores: Stores
) -> None:
    assert stores.pool is not None and stores.redis is not None
    location_settings = settings_for_test(
        "location", store_settings, listen=f"127.0.0.1:{free_port()}"
    )
    matching_settings = settings_for_test("matching", store_settings)
    group = f"matching-{uuid.uuid4().hex[:8]}"

    async def matching(settings: Settings, stores: Stores):  # type: ignore[no-untyped-def]
        return await build_matching(
            settings,
            stores,
            rules=DispatchRules(offer_ttl_s=30.0, search_again_s=0.2),
            location_addr=location_settings.server.listen,
            tick_s=0.05,
            group_start_id="$",
            consumer_group=group,
        )

    async def location(settings: Settings, stores: Stores):  # type: ignore[no-untyped-def]
        # A long presence: only the closed stream can take the courier out in this test.
        return await build_location(settings, stores, policy=LocationPolicy(presence_ttl_s=600.0))

    try:
        async with (
            serving(location, location_settings, stores) as (_, location_channel),
            serving(matching, matching_settings, stores) as (_, matching_channel),
        ):
            world = World(
                stores,
                location_settings,
                location_service_pb2_grpc.LocationServiceStub(location_channel),
            )
            offers = matching_service_pb2_grpc.MatchingServiceStub(matching_channel)
            shop = _spot()
            near, near_metadata = await world.courier()
            far, far_metadata = await world.courier()
            streams = {}
            for metres, metadata in ((300, near_metadata), (1_500, far_metadata)):
                stream = Stream(world, metadata)
                await stream.send(_fix(*_north(*shop, metres), _now(), 1))
                await stream.ack_up_to(1)
                offer_stream = offers.StreamOffers(
                    matching_service_pb2.StreamOffersRequest(), metadata=metadata
                )
                streams[metadata] = (stream, offer_stream)
            assert set(await world.nearby(*shop)) == {near, far}
            # The nearer courier's app goes away: both its streams end.
            for call in (c.call if isinstance(c, Stream) else c for c in streams[near_metadata]):
                call.cancel()

            async def hung_up() -> bool:
                return await stores.redis.hget(driver_key(near), "so") == b"0"  # type: ignore[union-attr,misc]

            await eventually(hung_up, every_s=0.05)
            order = (await shop_order(stores.pool, "confirmed", shop=shop)).order
            await offers.DispatchOrder(
                matching_service_pb2.DispatchOrderRequest(order_id=order),
                metadata=service_metadata(matching_settings, "order"),
            )
            offered = await asyncio.wait_for(streams[far_metadata][1].read(), 10)
            assert (offered.offer.order_id, offered.offer.driver_id) == (order, far)
            status = await offers.GetDispatchStatus(
                matching_service_pb2.GetDispatchStatusRequest(order_id=order),
                metadata=service_metadata(matching_settings, "order"),
            )
            assert [o.driver_id for o in status.dispatch_status.offers] == [far]
            stream, offer_stream = streams[far_metadata]
            offer_stream.cancel()
            await stream.close()
    finally:
        await stores.redis.xgroup_destroy(stream_for("order"), group)
