"""WatchDriverLocation at scale over real gRPC and Redis: one subscription per process, fanned out.

The location server here runs on a Redis database of its own, under a client name of its own:
its pub/sub connections can be counted in CLIENT LIST, and its watched set broken on purpose,
without touching other runs sharing the Redis.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from redis.asyncio import Redis

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from location_svc.ingest import WATCHED_KEY
from location_svc.server import build_server as build_location
from location_svc.service import LocationPolicy
from location_svc.store.drivers import DriverStore
from location_svc.watch import PositionHub
from mesh.auth import Role, SessionStore
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores, open_stores
from mesh.testing import bearer, service_metadata, serving, settings_for_test
from tests.integration import rows
from tests.polling import eventually
from tracking_svc.clients.positions import PositionFollower

#: The Redis database of this module's server: the other tests use 0, the benches 9 to 11
#: (and flush theirs).
DATABASE = 14
#: Short watches, so that a renewal round comes every second.
WATCH_TTL_S = 3.0

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Watching:
    location: location_service_pb2_grpc.LocationServiceStub
    hub: PositionHub
    redis: Redis
    settings: Settings
    client_name: str
    pool: asyncpg.Pool

    @property
    def service(self) -> Metadata:
        return service_metadata(self.settings)


@pytest.fixture
async def watching(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Watching]:
    client_name = f"loc-watch-{uuid.uuid4().hex[:8]}"
    parsed = urllib.parse.urlparse(store_settings.redis_url)
    url = urllib.parse.urlunparse(
        parsed._replace(path=f"/{DATABASE}", query=f"client_name={client_name}")
    )
    settings = replace(store_settings, redis_url=url)
    async with open_stores(settings, postgres=False) as opened:
        assert opened.redis is not None and stores.pool is not None
        local = Stores(pool=stores.pool, redis=opened.redis)
        hub = PositionHub(
            opened.redis, DriverStore(opened.redis, stores.pool), watch_ttl_s=WATCH_TTL_S
        )
        location_settings = settings_for_test("location", settings)

        async def build(settings, stores):
            # 300 streams of one caller in the first test: above the default per-caller limit.
            policy = LocationPolicy(watch_ttl_s=WATCH_TTL_S, watch_streams_per_caller=1000)
            return await build_location(settings, stores, policy=policy, hub=hub)

        async with serving(build, location_settings, local) as (_, channel):
            yield Watching(
                location_service_pb2_grpc.LocationServiceStub(channel),
                hub,
                opened.redis,
                location_settings,
                client_name,
                stores.pool,
            )


async def _couriers(world: Watching, count: int) -> list[tuple[str, Metadata]]:
    """``count`` drivers made straight in the database, each with a session."""
    sessions = SessionStore(
        world.redis, ttl_s=600, service_secret=world.settings.auth.service_secret
    )
    made = []
    async with world.pool.acquire() as conn:
        for _ in range(count):
            driver_id = await rows.courier(conn)
            made.append((driver_id, bearer(await sessions.create(driver_id, Role.DRIVER))))
    return made


def _fix(lat: float, lng: float) -> location_pb2.LocationFix:
    ms = int(time.time() * 1000)
    return location_pb2.LocationFix(
        position=common_pb2.LatLng(latitude=lat, longitude=lng),
        accuracy_meters=8.0,
        speed_mps=1.0,
        device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
    )


async def _report(world: Watching, metadata: Metadata, lat: float, lng: float) -> None:
    await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=[_fix(lat, lng)]), metadata=metadata
    )


class Watcher:
    """One WatchDriverLocation stream, read by a task of its own into ``latitudes``."""

    def __init__(self, world: Watching, driver_id: str, interval_s: float = 0.0) -> None:
        self.driver_id = driver_id
        self.latitudes: list[float] = []
        self.call = world.location.WatchDriverLocation(
            location_service_pb2.WatchDriverLocationRequest(
                driver_id=driver_id,
                min_interval_duration=duration_pb2.Duration(nanos=int(interval_s * 1e9)),
            ),
            metadata=world.service,
        )
        self._reader: asyncio.Task[None] | None = None

    def read_all(self) -> None:
        async def read() -> None:
            # read(), not iteration: the first message may have been read already.
            while (message := await self.call.read()) is not grpc.aio.EOF:
                self.latitudes.append(round(message.location.position.latitude, 6))

        self._reader = asyncio.create_task(read())

    def heard(self, lat: float) -> bool:
        return round(lat, 6) in self.latitudes

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def _pubsub_connections(world: Watching) -> int:
    """The server's connections in pub/sub mode (its client name marks them)."""
    clients = await world.redis.client_list()
    return sum(
        1
        for c in clients
        if c.get("name") == world.client_name
        and (int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0 or "P" in c.get("flags", ""))
    )


async def _until_heard(
    world: Watching, watchers: list[Watcher], sessions: dict[str, Metadata], spots: dict[str, float]
) -> None:
    """Reports each driver at its spot, again and again, until every watcher heard it (a new
    watch is published once ingest has read the watched set again)."""
    lng = 10.0

    async def round_() -> bool:
        waiting = [w for w in watchers if not w.heard(spots[w.driver_id])]
        await asyncio.gather(
            *(_report(world, sessions[w.driver_id], spots[w.driver_id], lng) for w in waiting)
        )
        await asyncio.sleep(0.2)
        return all(w.heard(spots[w.driver_id]) for w in watchers)

    await eventually(round_)


async def test_300_watch_streams_share_one_subscription_and_each_hears_its_driver(
    watching: Watching,
) -> None:
    drivers = await _couriers(watching, 300)
    sessions = {d: m for d, m in drivers}
    # Distinct spots: a watcher hearing another driver's fix would not match its own.
    start = {d: 20.0 + i * 0.001 for i, (d, _) in enumerate(drivers)}
    moved = {d: lat + 0.0003 for d, lat in start.items()}
    await asyncio.gather(*(_report(watching, sessions[d], start[d], 10.0) for d in sessions))
    watchers = [Watcher(watching, d) for d in sessions]
    try:
        firsts = await asyncio.gather(*(asyncio.wait_for(w.call.read(), 30) for w in watchers))
        for watcher, first in zip(watchers, firsts, strict=True):
            assert first.location.position.latitude == pytest.approx(start[watcher.driver_id])
        for watcher in watchers:
            watcher.read_all()
        await eventually(lambda: watching.hub.subscribed_drivers == 300)
        assert all(watching.hub.watchers(d) == 1 for d in sessions)
        # The hub's one connection, beside the status and arrival listeners': never one per
        # stream (300 streams held 300 connections and exhausted the pool of 200 before).
        assert await _pubsub_connections(watching) <= 3
        await _until_heard(watching, watchers, sessions, moved)
        assert await _pubsub_connections(watching) <= 3
    finally:
        await asyncio.gather(*(w.close() for w in watchers))
    await eventually(lambda: watching.hub.subscribed_drivers == 0)
    assert watching.hub.watchers(drivers[0][0]) == 0


async def test_streams_hear_fixes_after_redis_drops_the_subscription(watching: Watching) -> None:
    drivers = await _couriers(watching, 20)
    sessions = {d: m for d, m in drivers}
    base = random.uniform(-50, 50)
    spots = [{d: base + i * 0.001 + k * 0.0002 for i, d in enumerate(sessions)} for k in range(3)]
    await asyncio.gather(*(_report(watching, sessions[d], spots[0][d], 10.0) for d in sessions))
    watchers = [Watcher(watching, d) for d in sessions]
    for watcher in watchers:
        watcher.read_all()
    try:
        await eventually(lambda: all(w.heard(spots[0][w.driver_id]) for w in watchers))
        await _until_heard(watching, watchers, sessions, spots[1])
        lost = watching.hub.errors
        await watching.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # Sent once, likely while the hub is away: what it missed it reads from the store.
        await asyncio.gather(*(_report(watching, sessions[d], spots[2][d], 10.0) for d in sessions))
        await eventually(lambda: watching.hub.errors > lost)
        await eventually(lambda: all(w.heard(spots[2][w.driver_id]) for w in watchers))
        # And the subscription is back: new fixes flow as before.
        again = {d: lat + 0.0001 for d, lat in spots[2].items()}
        await _until_heard(watching, watchers, sessions, again)
        assert watching.hub.subscribed_drivers == len(sessions)
    finally:
        await asyncio.gather(*(w.close() for w in watchers))


async def test_a_watcher_that_never_reads_holds_up_no_other(watching: Watching) -> None:
    [(driver_id, metadata)] = await _couriers(watching, 1)
    lat = random.uniform(-50, 50)
    await _report(watching, metadata, lat, 10.0)
    stalled = Watcher(watching, driver_id)
    await asyncio.wait_for(stalled.call.read(), 30)
    fast = Watcher(watching, driver_id)
    fast.read_all()
    try:
        await eventually(lambda: watching.hub.watchers(driver_id) == 2)
        # Each fix reaches the reading watcher before the next is sent, while the other
        # stream takes nothing.
        for step in range(1, 40):
            target = lat + step * 0.0001
            await _until_heard(watching, [fast], {driver_id: metadata}, {driver_id: target})
        last = lat + 39 * 0.0001
        # The stalled one, read at last, catches up on the newest position.
        stalled.read_all()
        await eventually(lambda: stalled.heard(last))
    finally:
        await asyncio.gather(stalled.close(), fast.close())


async def test_the_watch_renewal_survives_a_redis_error(watching: Watching) -> None:
    [(driver_id, metadata)] = await _couriers(watching, 1)
    lat = random.uniform(-50, 50)
    watcher = Watcher(watching, driver_id)
    watcher.read_all()
    renewal = watching.hub.renewal
    try:
        await eventually(lambda: watcher.latitudes != [])
        await eventually(lambda: renewal.renewals > 0)
        # The watched set made a string: every ZADD of the renewal fails with WRONGTYPE.
        await watching.redis.set(WATCHED_KEY, "not a sorted set")
        failed = renewal.errors
        await eventually(lambda: renewal.errors > failed)
        await watching.redis.delete(WATCHED_KEY)

        async def renewed() -> bool:
            return await watching.redis.zscore(WATCHED_KEY, driver_id) is not None

        await eventually(renewed)
        await _until_heard(watching, [watcher], {driver_id: metadata}, {driver_id: lat})
    finally:
        await watcher.close()


async def test_a_watch_of_an_unknown_driver_is_refused(watching: Watching) -> None:
    call = watching.location.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(driver_id=str(uuid.uuid4())),
        metadata=watching.service,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert watching.hub.subscribed_drivers == 0


Follow = location_service_pb2.FollowDriversRequest


class Follower:
    """One FollowDrivers stream, read by a task of its own into the newest latitude per driver."""

    def __init__(self, world: Watching, metadata: Metadata | None = None) -> None:
        self.requests: asyncio.Queue[location_service_pb2.FollowDriversRequest] = asyncio.Queue()
        self.latitudes: dict[str, set[float]] = {}
        self.unknown: list[str] = []
        self.batches = 0
        self.call = world.location.FollowDrivers(
            self._requests(), metadata=metadata or world.service
        )
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[location_service_pb2.FollowDriversRequest]:
        while True:
            yield await self.requests.get()

    async def _read(self) -> None:
        async for response in self.call:
            self.batches += 1
            for location in response.locations:
                self.latitudes.setdefault(location.driver_id, set()).add(
                    round(location.position.latitude, 6)
                )
            self.unknown.extend(response.unknown_driver_ids)

    def heard(self, driver_id: str, lat: float) -> bool:
        return round(lat, 6) in self.latitudes.get(driver_id, ())

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def test_one_follow_stream_carries_more_couriers_than_a_connection_has_streams(
    watching: Watching,
) -> None:
    # More than a connection's 1,000 concurrent streams: one stream per courier would stall.
    drivers = await _couriers(watching, 1200)
    sessions = {d: m for d, m in drivers}
    ids = list(sessions)
    start = {d: 30.0 + i * 0.0005 for i, d in enumerate(ids)}
    moved = {d: lat + 0.0002 for d, lat in start.items()}
    await _report_all(watching, sessions, start)
    follower = Follower(watching)
    nobody = str(uuid.uuid4())
    try:
        for chunk in range(0, len(ids), 500):
            await follower.requests.put(
                location_service_pb2.FollowDriversRequest(
                    follow_driver_ids=ids[chunk : chunk + 500]
                )
            )
        await follower.requests.put(
            location_service_pb2.FollowDriversRequest(follow_driver_ids=[nobody])
        )
        # Each courier's last position comes first.
        await eventually(lambda: all(follower.heard(d, start[d]) for d in ids))
        await eventually(lambda: follower.unknown == [nobody])
        assert all(watching.hub.watchers(d) == 1 for d in ids)
        # Half are dropped; the other half's new fixes keep coming.
        kept, dropped = ids[:600], ids[600:]
        await follower.requests.put(
            location_service_pb2.FollowDriversRequest(unfollow_driver_ids=dropped[:500])
        )
        await follower.requests.put(
            location_service_pb2.FollowDriversRequest(unfollow_driver_ids=dropped[500:])
        )
        await eventually(lambda: all(watching.hub.watchers(d) == 0 for d in dropped))

        async def round_() -> bool:
            waiting = {d: sessions[d] for d in kept if not follower.heard(d, moved[d])}
            await _report_all(watching, waiting, moved)
            await asyncio.sleep(0.2)
            return all(follower.heard(d, moved[d]) for d in kept)

        await _report_all(watching, {d: sessions[d] for d in dropped}, moved)
        await eventually(round_)
        assert not any(follower.heard(d, moved[d]) for d in dropped)
        # Batched: far fewer messages than positions.
        assert follower.batches < sum(len(v) for v in follower.latitudes.values())
    finally:
        await follower.close()
    await eventually(lambda: all(watching.hub.watchers(d) == 0 for d in ids))


async def _report_all(
    world: Watching, sessions: dict[str, Metadata], spots: dict[str, float]
) -> None:
    """Reports each driver at its spot, 200 calls at a time (a connection's stream limit)."""
    ids = list(sessions)
    for start in range(0, len(ids), 200):
        batch = ids[start : start + 200]
        await asyncio.gather(*(_report(world, sessions[d], spots[d], 11.0) for d in batch))


async def test_only_services_and_admins_follow_couriers(watching: Watching) -> None:
    [(driver, metadata)] = await _couriers(watching, 1)
    follower = Follower(watching, metadata)
    await follower.requests.put(
        location_service_pb2.FollowDriversRequest(follow_driver_ids=[driver])
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await follower.call.read()
        await follower.call.read()
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await follower.close()


async def test_tracking_s_follower_lives_through_a_failing_position_handler(
    watching: Watching,
) -> None:
    """tracking_svc follows every courier it watches over one FollowDrivers stream: an error
    while handling one position must not end that stream's loop silently (every watcher's
    positions would stop for good); the stream is opened again with the courier still followed
    (before, the first error ended the follower's task)."""
    [(driver_id, metadata)] = await _couriers(watching, 1)
    await _report(watching, metadata, 60.17, 24.94)
    heard: list[float] = []
    failed = False

    def on_location(location: location_pb2.DriverLocation) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("a bug in a position handler")
        heard.append(location.position.latitude)

    follower = PositionFollower(watching.location, watching.service, on_location, retry_s=0.05)
    follower.follow(driver_id)
    task = asyncio.create_task(follower.run())
    try:
        await eventually(lambda: failed)
        await eventually(lambda: follower.streams_opened == 2)
        assert not task.done() and follower.errors == 1
        assert follower.followed == {driver_id}
    finally:
        follower.stop()
        # A stop cancels the open call, which ends the task as cancelled (as tracking expects).
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
