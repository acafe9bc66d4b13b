"""Position streams under load and faults, over real gRPC, PostgreSQL and Redis processes.

- Hundreds of WatchDriverLocation streams hold no Redis connection each (the server here has a
  pool of 16), GPS ingest, availability and session-checked calls go on beside them, and one
  caller's streams are capped.
- A subscription whose connection stops answering (a frozen Redis, or a network path that died
  without a word, played by a proxy that goes silent) is noticed and made again, and the
  streams go on; a hub that stops ends its streams with UNAVAILABLE.

The servers here use a Redis database and client name of their own, so their connections can
be counted in CLIENT LIST; the frozen Redis is a redis-server this module starts and owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from redis.asyncio import Redis

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from location_svc.server import build_server as build_location
from location_svc.service import LocationPolicy
from location_svc.store.drivers import DriverStore
from location_svc.watch import PositionHub
from mesh.auth import Role, SessionStore
from mesh.embedded import tcp_reachable
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores, open_stores
from mesh.testing import bearer, service_metadata, serving, settings_for_test
from tests.integration import rows
from tests.integration.marketplace import details
from tests.polling import eventually

#: This module's Redis database (test_location_watch uses 14, the benches 9 to 11).
DATABASE = 13
#: The servers' Redis pool: far fewer connections than the streams they serve.
POOL = 16
#: Streams one caller may hold open in these servers.
PER_CALLER = 300
#: Silence on the subscription after which the hub sends a PING (and twice this: gone).
PING_S = 0.5

Metadata = tuple[tuple[str, str], ...]


@dataclass
class World:
    location: location_service_pb2_grpc.LocationServiceStub
    hub: PositionHub
    redis: Redis
    settings: Settings
    client_name: str
    pool: asyncpg.Pool
    admin: Metadata = ()
    sessions: SessionStore | None = None

    @property
    def service(self) -> Metadata:
        return service_metadata(self.settings)


@contextlib.asynccontextmanager
async def _world(
    redis_url: str, store_settings: StoreSettings, stores: Stores
) -> AsyncIterator[World]:
    """A location server on ``redis_url`` (database DATABASE) with a pool of POOL connections."""
    client_name = f"loc-hard-{uuid.uuid4().hex[:8]}"
    parsed = urllib.parse.urlparse(redis_url)
    url = urllib.parse.urlunparse(
        parsed._replace(path=f"/{DATABASE}", query=f"client_name={client_name}")
    )
    settings = replace(store_settings, redis_url=url, redis_max_connections=POOL)
    async with open_stores(settings, postgres=False) as opened:
        assert opened.redis is not None and stores.pool is not None
        local = Stores(pool=stores.pool, redis=opened.redis)
        hub = PositionHub(
            opened.redis, DriverStore(opened.redis, stores.pool), watch_ttl_s=3.0, ping_s=PING_S
        )
        location_settings = settings_for_test("location", settings)
        policy = LocationPolicy(watch_ttl_s=3.0, watch_streams_per_caller=PER_CALLER)

        async def build(settings: Settings, stores: Stores):  # type: ignore[no-untyped-def]
            return await build_location(settings, stores, policy=policy, hub=hub)

        async with serving(build, location_settings, local) as (_, channel):
            sessions = SessionStore(
                opened.redis, ttl_s=600, service_secret=location_settings.auth.service_secret
            )
            admin = bearer(await sessions.create(str(uuid.uuid4()), Role.ADMIN))
            yield World(
                location_service_pb2_grpc.LocationServiceStub(channel),
                hub,
                opened.redis,
                location_settings,
                client_name,
                stores.pool,
                admin,
                sessions,
            )
            hub.stop()


@pytest.fixture
async def world(
    redis_url: str, store_settings: StoreSettings, stores: Stores
) -> AsyncIterator[World]:
    async with _world(redis_url, store_settings, stores) as made:
        yield made


async def _couriers(world: World, count: int) -> list[tuple[str, Metadata]]:
    """``count`` couriers made straight in the database, each with a session."""
    assert world.sessions is not None
    made = []
    async with world.pool.acquire() as conn:
        for _ in range(count):
            driver_id = await rows.courier(conn)
            made.append((driver_id, bearer(await world.sessions.create(driver_id, Role.DRIVER))))
    return made


def _fix(lat: float, lng: float) -> location_pb2.LocationFix:
    ms = int(time.time() * 1000)
    return location_pb2.LocationFix(
        position=common_pb2.LatLng(latitude=lat, longitude=lng),
        accuracy_meters=8.0,
        speed_mps=1.0,
        device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
    )


async def _report(world: World, metadata: Metadata, lat: float, lng: float = 10.0) -> None:
    response = await world.location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(fixes=[_fix(lat, lng)]),
        metadata=metadata,
        timeout=60,
    )
    assert response.accepted_count == 1


class Watcher:
    """One WatchDriverLocation stream, read by a task of its own into ``latitudes``."""

    def __init__(self, world: World, driver_id: str, metadata: Metadata) -> None:
        self.driver_id = driver_id
        self.latitudes: list[float] = []
        self.ended: grpc.aio.AioRpcError | None = None
        self.call = world.location.WatchDriverLocation(
            location_service_pb2.WatchDriverLocationRequest(
                driver_id=driver_id, min_interval_duration=duration_pb2.Duration()
            ),
            metadata=metadata,
            timeout=600,
        )
        self._reader: asyncio.Task[None] | None = None

    def read_all(self) -> None:
        async def read() -> None:
            try:
                while (message := await self.call.read()) is not grpc.aio.EOF:
                    self.latitudes.append(round(message.location.position.latitude, 6))
            except grpc.aio.AioRpcError as err:
                self.ended = err

        self._reader = asyncio.create_task(read())

    def heard(self, lat: float) -> bool:
        return round(lat, 6) in self.latitudes

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def _until_heard(world: World, watcher: Watcher, metadata: Metadata, lat: float) -> None:
    """Reports the driver at ``lat`` again and again until the watcher heard it (ingest
    publishes a driver's fixes once it has read the watched set with the driver in it)."""

    async def round_() -> bool:
        if not watcher.heard(lat):
            await _report(world, metadata, lat)
            await asyncio.sleep(0.2)
        return watcher.heard(lat)

    await eventually(round_)


async def _connections(world: World) -> tuple[int, int]:
    """The server's Redis connections (its client name marks them): all, and in pub/sub."""
    clients = [c for c in await world.redis.client_list() if c.get("name") == world.client_name]
    subscribed = sum(1 for c in clients if int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0)
    return len(clients), subscribed


async def _subscriptions(world: World) -> list[int]:
    """How many channels each of the server's pub/sub connections is subscribed to."""
    clients = await world.redis.client_list()
    return [
        int(c.get("sub", 0))
        for c in clients
        if c.get("name") == world.client_name and int(c.get("sub", 0)) > 0
    ]


def _reason(err: grpc.aio.AioRpcError) -> str:
    return details(err)[0]


# --- many streams, few connections, a cap per caller -------------------------------------------


async def test_300_watch_streams_hold_no_redis_connection_and_one_caller_is_capped(
    world: World,
) -> None:
    couriers = await _couriers(world, PER_CALLER)
    spots = {d: 20.0 + i * 0.001 for i, (d, _) in enumerate(couriers)}
    for start in range(0, len(couriers), 50):
        await asyncio.gather(
            *(_report(world, m, spots[d]) for d, m in couriers[start : start + 50])
        )
    before = await _connections(world)

    watchers = [Watcher(world, d, world.admin) for d, _ in couriers]
    try:
        firsts = await asyncio.gather(*(w.call.read() for w in watchers))
        for watcher, first in zip(watchers, firsts, strict=True):
            assert first.location.position.latitude == pytest.approx(spots[watcher.driver_id])
        for watcher in watchers:
            watcher.read_all()
        await eventually(lambda: world.hub.subscribed_drivers == PER_CALLER)

        # The admin's next stream, of either kind, is refused; another caller's is not.
        extra = world.location.WatchDriverLocation(
            location_service_pb2.WatchDriverLocationRequest(driver_id=couriers[0][0]),
            metadata=world.admin,
            timeout=60,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await extra.read()
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(refused.value) == "TOO_MANY_POSITION_STREAMS"

        async def no_requests() -> AsyncIterator[location_service_pb2.FollowDriversRequest]:
            await asyncio.Event().wait()
            yield location_service_pb2.FollowDriversRequest()

        follow = world.location.FollowDrivers(no_requests(), metadata=world.admin, timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await follow.read()
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        other = Watcher(world, couriers[1][0], world.service)
        first = await other.call.read()
        assert first.location.driver_id == couriers[1][0]
        await other.close()

        # With 300 streams open on a pool of 16: GPS ingest reaches the watchers, couriers
        # change their availability, and session-checked calls answer.
        moved = couriers[:40]
        for _, metadata in moved:
            await world.location.SetAvailability(
                location_service_pb2.SetAvailabilityRequest(
                    request_id=str(uuid.uuid4()), status=common_pb2.DRIVER_STATUS_AVAILABLE
                ),
                metadata=metadata,
                timeout=60,
            )
        by_id = {w.driver_id: w for w in watchers}
        for driver_id, metadata in moved:
            await _until_heard(world, by_id[driver_id], metadata, spots[driver_id] + 0.0003)
            got = await world.location.GetDriverLocation(
                location_service_pb2.GetDriverLocationRequest(driver_id=driver_id),
                metadata=metadata,
                timeout=60,
            )
            assert got.location.status == common_pb2.DRIVER_STATUS_AVAILABLE
            assert got.location.position.latitude == pytest.approx(spots[driver_id] + 0.0003)

        during = await _connections(world)
        channels = sorted(await _subscriptions(world), reverse=True)
        # Flat: the pool's connections at most (a connection per stream would be 300, more
        # than the pool holds); the hub's one connection carries all 300 channels, and the
        # other subscribers are the process's listeners, a channel each.
        assert during[0] <= POOL
        assert channels[0] == PER_CALLER and all(n == 1 for n in channels[1:])
        assert len(channels) == during[1] < 10
        print(f"redis connections before the streams {before}, with 300 open {during}")

        # A stream closed frees its place for the caller's next.
        await watchers.pop().close()

        async def reopened() -> bool:
            again = Watcher(world, couriers[-1][0], world.admin)
            try:
                await again.call.read()
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            watchers.append(again)
            return True

        await eventually(reopened, every_s=0.1)
    finally:
        await asyncio.gather(*(w.close() for w in watchers))
    await eventually(lambda: world.hub.subscribed_drivers == 0)


# --- a subscription that stops answering ---------------------------------------------------------


@dataclass
class _Pair:
    subscriber: bool = False
    dead: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class SilentProxy:
    """A TCP proxy in front of Redis that can silence the connections that subscribed: they
    stay open and carry nothing more either way, as over a network path that died without a
    word (no reset, no close). New connections pass as before."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._pairs: list[_Pair] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        pair = _Pair(writers=[writer, up_writer])
        self._pairs.append(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, out: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if out and b"SUBSCRIBE" in data:
                        pair.subscriber = True
                    if not pair.dead:
                        dst.write(data)
                        await dst.drain()
            if not pair.dead:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def silence_subscribers(self) -> int:
        """Silences every connection that has subscribed so far; how many."""
        silenced = [p for p in self._pairs if p.subscriber and not p.dead]
        for pair in silenced:
            pair.dead = True
        return len(silenced)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in self._pairs:
            for writer in pair.writers:
                writer.close()


async def test_a_subscription_whose_connection_goes_silent_is_made_again(
    redis_url: str, store_settings: StoreSettings, stores: Stores
) -> None:
    parsed = urllib.parse.urlparse(redis_url)
    proxy = SilentProxy((parsed.hostname or "127.0.0.1", parsed.port or 6379))
    port = await proxy.start()
    try:
        through = urllib.parse.urlunparse(parsed._replace(netloc=f"127.0.0.1:{port}"))
        async with _world(through, store_settings, stores) as world:
            [(driver_id, metadata)] = await _couriers(world, 1)
            lat = random.uniform(-50, 50)
            watcher = Watcher(world, driver_id, world.admin)
            watcher.read_all()
            try:
                await _until_heard(world, watcher, metadata, lat)
                lost = world.hub.errors
                assert proxy.silence_subscribers() >= 1
                # Nothing said the connection is gone; the hub's unanswered PING does.
                await _until_heard(world, watcher, metadata, lat + 0.0002)
                assert world.hub.errors > lost
                await _until_heard(world, watcher, metadata, lat + 0.0004)
                assert watcher.ended is None
            finally:
                await watcher.close()
    finally:
        await proxy.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """A redis-server this test owns (and may freeze): its URL and pid."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed on PATH"
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: tcp_reachable("127.0.0.1", port), every_s=0.05)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        await process.wait()


async def test_streams_go_on_after_redis_is_frozen_and_thawed(
    own_redis: tuple[str, int], store_settings: StoreSettings, stores: Stores
) -> None:
    url, pid = own_redis
    async with _world(url, store_settings, stores) as world:
        [(driver_id, metadata)] = await _couriers(world, 1)
        lat = random.uniform(-50, 50)
        watcher = Watcher(world, driver_id, world.admin)
        watcher.read_all()
        try:
            await _until_heard(world, watcher, metadata, lat)
            lost, renewal_errors = world.hub.errors, world.hub.renewal.errors
            os.kill(pid, signal.SIGSTOP)
            try:
                # The hub hears no answer to its PING, and the renewal none to its ZADD: both
                # give up on their connection and try again, the stream stays open.
                await eventually(lambda: world.hub.errors > lost)
                await eventually(lambda: world.hub.renewal.errors > renewal_errors)
            finally:
                os.kill(pid, signal.SIGCONT)
            await _until_heard(world, watcher, metadata, lat + 0.0002)
            await eventually(lambda: world.hub.renewal.failing == 0)
            assert watcher.ended is None
        finally:
            await watcher.close()


async def test_streams_end_unavailable_when_the_hub_stops(world: World) -> None:
    [(driver_id, metadata)] = await _couriers(world, 1)
    lat = random.uniform(-50, 50)
    watcher = Watcher(world, driver_id, world.admin)
    watcher.read_all()
    follow_requests: asyncio.Queue[location_service_pb2.FollowDriversRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[location_service_pb2.FollowDriversRequest]:
        while True:
            yield await follow_requests.get()

    follow = world.location.FollowDrivers(requests(), metadata=world.service, timeout=60)
    await follow_requests.put(
        location_service_pb2.FollowDriversRequest(follow_driver_ids=[driver_id])
    )
    try:
        await _until_heard(world, watcher, metadata, lat)
        await follow.read()
        world.hub.stop()
        # Not left open with nothing on them: both end, well before their 60 s deadline.
        await eventually(lambda: watcher.ended is not None)
        assert watcher.ended is not None
        assert watcher.ended.code() is grpc.StatusCode.UNAVAILABLE
        assert _reason(watcher.ended) == "POSITIONS_UNAVAILABLE"
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await follow.read()
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        # And a new watch is refused the same way rather than left blank.
        again = world.location.WatchDriverLocation(
            location_service_pb2.WatchDriverLocationRequest(driver_id=driver_id),
            metadata=world.admin,
            timeout=60,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await again.read()
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        follow.cancel()
        await watcher.close()
