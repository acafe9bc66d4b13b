"""Faults: how soon a revoked or expired session ends the streams it opened, and how soon a
frozen store turns calls into UNAVAILABLE and health into NOT_SERVING, and back.

Real servers on real stores throughout; the bench starts every redis-server it uses itself and
never freezes the shared PostgreSQL.

Part ``sessions``: order_svc, location_svc, matching_svc and tracking_svc as processes of their
own on a scratch database of the shared PostgreSQL and a redis-server of the bench's own.
``--sessions`` orders in preparation (bench/tracking.py's world), each with its courier and its
customer. Every courier session holds StreamLocation (one fix sent and acked),
WatchDriverLocation (their own position), StreamOffers and TrackOrder (their order); every
customer session TrackOrder and StreamNotifications. All of them stay open while, one session at
a time (couriers and customers in turn):

1. Logout (on order_svc): from Logout's answer to each of the session's streams ending
   UNAUTHENTICATED, against the Logout round trip itself and a GetMe just before it;
2. expiry: ``--expiring`` new courier sessions made with a ``--ttl`` s lifetime, opened one after
   the other, each holding the four courier streams: from the session's expiry in Redis to
   each stream's end;
3. removal without a message: ``--removed`` courier sessions whose key is deleted from Redis
   directly (a revocation message that was lost, a flushed store), each after a random pause:
   from the delete to each stream's end (the services' periodic check finds these).

Part ``redis`` (and ``postgres``): order_svc as a process on a redis-server (a PostgreSQL
cluster) of the bench's own, frozen with SIGSTOP for ``--freeze`` s while GetMe and CreateOrder
are sent open loop (``--rate`` calls/s in all) with a 60 s deadline and health is checked every
50 ms. Measured: from the freeze (or from the call, if sent later) to each call's answer,
against the same RPC's latency just before the freeze; when health turns NOT_SERVING after the
freeze and SERVING after SIGCONT; the first call answered OK after SIGCONT. The ``postgres``
part runs initdb for a cluster of its own (the system's PostgreSQL binaries, else the
``pgserver`` package's) and is skipped, saying why, if that cannot be done.

    .venv/bin/python bench/faults.py [--parts sessions,redis,postgres] [--sessions 100]
        [--expiring 40] [--ttl 6] [--removed 40] [--freeze 8] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.location import SECRET, _fix
from bench.nearby import quantile
from bench.tracking import _run, make_world
from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import account_service_pb2, account_service_pb2_grpc
from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from mesh.auth import Role, SessionStore
from mesh.embedded import free_port, redis_server_binary, tcp_reachable
from mesh.health_watch import FAILURES_TO_TRIP
from mesh.migrate import migrate
from mesh.settings import StoreSettings
from mesh.stores import Stores, make_redis
from mesh.testing import bearer, settings_for_test, spawn
from tests.integration.marketplace import Caller, Market

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Every call's deadline: far above any store timeout, so an answer before it is the service's.
DEADLINE_S = 60.0
#: The longest a stream may take to open or to end before the bench calls it stuck (a bound,
#: never a figure).
BOUND_S = 30.0
STREAMS_PER_CHANNEL = 100
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
HEALTH_EVERY_S = 0.05
GRPC_SERVICES = ("location", "order", "matching", "tracking")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def _summary(samples: list[float]) -> str:
    """p50 / p99 / max of seconds, in ms."""
    if not samples:
        return "no samples"
    return (
        f"p50 {_ms(quantile(samples, 0.5))}  p99 {_ms(quantile(samples, 0.99))}  "
        f"max {_ms(max(samples))}  ({len(samples)})"
    )


def _reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of an error, empty if it carries none."""
    with contextlib.suppress(Exception):
        status = rpc_status.from_call(err)
        for detail in status.details if status is not None else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    return ""


async def _until(predicate: Callable[[], bool], bound_s: float = BOUND_S) -> bool:
    deadline = time.perf_counter() + bound_s
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- stores of the bench's own ----------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the bench's own on a free port, which it may freeze and thaw."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(data_dir)),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def started(self) -> PrivateRedis:
        if not await _until(lambda: tcp_reachable("127.0.0.1", self.port, 0.2), 10.0):
            raise RuntimeError(f"redis-server on port {self.port} did not start")
        return self

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.process.kill()
        self.process.wait()


def _postgres_bin() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: the newest system PostgreSQL, else the one
    the ``pgserver`` package ships."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


class PrivatePostgres:
    """A PostgreSQL cluster of the bench's own (initdb in a temporary directory, a free port),
    which it may freeze and thaw: the shared server must never be stopped."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        # PostgreSQL refuses to run as root; then it runs as the system's postgres user.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="delivery-bench-pg-"))
        self.data = self.dir / "data"
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/delivery_bench_faults"
        self._frozen: list[int] = []

    def _run(self, tool: str, *args: str) -> str:
        done = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            user=self.user,
            cwd=self.dir,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")
        return done.stdout

    @property
    def version(self) -> str:
        return self._run("pg_ctl", "--version").strip()

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def _pids(self) -> list[int]:
        """The postmaster and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The parent pid is the second field after the parenthesised command name.
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    def freeze(self) -> None:
        self._frozen = self._pids()
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def remove(self) -> None:
        self.thaw()
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class Services:
    """Service processes started with :func:`mesh.testing.spawn`, stopped together."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []
        self.addresses: dict[str, str] = {}

    async def start(
        self, names: tuple[str, ...], database_url: str, redis_url: str, log_level: str
    ) -> None:
        env = {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": redis_url,
            "DELIVERY_SERVICE_SECRET": SECRET,
            "DELIVERY_LOG_LEVEL": log_level,
            "DELIVERY_GRACE_S": "1",
        }
        # location first: matching and tracking are given its address.
        for name in names:
            extra = {f"DELIVERY_{name.upper()}_LISTEN": "127.0.0.1:0"}
            if "location" in self.addresses:
                extra["DELIVERY_LOCATION_ADDR"] = self.addresses["location"]
            process, ports = await spawn([sys.executable, "-m", f"{name}_svc"], {**env, **extra})
            self.processes.append(process)
            self.addresses[name] = f"127.0.0.1:{ports[name]}"

    async def stop(self) -> None:
        for process in reversed(self.processes):
            if process.returncode is None:
                process.terminate()
                await process.wait()
        self.processes.clear()


# --- part sessions --------------------------------------------------------------------------


@dataclass
class Stream:
    """One open stream of a session and how it ended."""

    rpc: str
    task: asyncio.Task[tuple[str, str, float]]
    #: Whether the stream sends a message once open (StreamOffers and StreamNotifications
    #: send nothing until there is something to say).
    speaks_first: bool = False
    #: Whether that first message came.
    opened: bool = False

    def outcome(self) -> tuple[str, str, float]:
        """(status code, ErrorInfo reason, perf_counter at the end)."""
        if not self.task.done():
            return "STILL OPEN", "", float("nan")
        if self.task.exception() is not None:
            return f"FAILED {self.task.exception()!r}"[:80], "", float("nan")
        return self.task.result()


class Channels:
    """A few channels to each service, ``STREAMS_PER_CHANNEL`` streams apiece at most."""

    def __init__(self, addresses: dict[str, str], streams: dict[str, int]) -> None:
        self._channels = {
            name: [
                grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
                for _ in range(max(1, -(-streams.get(name, 1) // STREAMS_PER_CHANNEL)))
            ]
            for name, addr in addresses.items()
        }
        self._next = {name: itertools.cycle(chs) for name, chs in self._channels.items()}

    def __call__(self, name: str) -> grpc.aio.Channel:
        return next(self._next[name])

    async def close(self) -> None:
        for channels in self._channels.values():
            for channel in channels:
                await channel.close()


class Holder:
    """Opens a session's streams and keeps them open until they end."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._sequence: collections.Counter[str] = collections.Counter()

    @staticmethod
    def _hold(
        rpc: str,
        call: Any,
        first: asyncio.Event | None = None,
        ended: asyncio.Event | None = None,
    ) -> Stream:
        async def read() -> tuple[str, str, float]:
            try:
                async for _ in call:
                    if first is not None:
                        first.set()
            except grpc.aio.AioRpcError as err:
                return err.code().name, _reason(err), time.perf_counter()
            finally:
                if ended is not None:
                    ended.set()
            return "OK", "", time.perf_counter()

        return Stream(rpc, asyncio.create_task(read()), speaks_first=first is not None)

    @staticmethod
    async def _opened(stream: Stream, first: asyncio.Event) -> None:
        # Opened once the first message came, or the stream ended (its outcome says how).
        done = asyncio.ensure_future(first.wait())
        await asyncio.wait({done, stream.task}, timeout=BOUND_S, return_when="FIRST_COMPLETED")
        done.cancel()
        stream.opened = first.is_set()

    async def courier(
        self, token: str, driver_id: str, order_id: str, lat: float, lng: float
    ) -> list[Stream]:
        """StreamLocation (a fix, acked), then WatchDriverLocation of their own position,
        StreamOffers and TrackOrder of their order."""
        metadata = bearer(token)
        self._sequence[driver_id] += 1
        sequence = self._sequence[driver_id]

        async def fixes() -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
            # A metre north per stream: one courier's streams never look like a jump.
            yield _fix(lat + sequence * 1e-5, lng, time.time_ns() // 1_000_000, sequence)
            # Then silent, as a parked courier's app, until the stream ends.
            await ended.wait()

        location = location_service_pb2_grpc.LocationServiceStub(self._channels("location"))
        acked, ended = asyncio.Event(), asyncio.Event()
        gps = self._hold(
            "StreamLocation", location.StreamLocation(fixes(), metadata=metadata), acked, ended
        )
        await self._opened(gps, acked)
        firsts = [asyncio.Event(), asyncio.Event()]
        watch = self._hold(
            "WatchDriverLocation",
            location.WatchDriverLocation(
                location_service_pb2.WatchDriverLocationRequest(driver_id=driver_id),
                metadata=metadata,
            ),
            firsts[0],
        )
        track = self._track(order_id, metadata, firsts[1])
        offers = self._hold(
            "StreamOffers",
            matching_service_pb2_grpc.MatchingServiceStub(self._channels("matching")).StreamOffers(
                matching_service_pb2.StreamOffersRequest(), metadata=metadata
            ),
        )
        await asyncio.gather(self._opened(watch, firsts[0]), self._opened(track, firsts[1]))
        return [gps, watch, offers, track]

    def _track(self, order_id: str, metadata: Any, first: asyncio.Event) -> Stream:
        stub = tracking_service_pb2_grpc.TrackingServiceStub(self._channels("tracking"))
        call = stub.TrackOrder(
            tracking_service_pb2.TrackOrderRequest(order_id=order_id), metadata=metadata
        )
        return self._hold("TrackOrder", call, first)

    async def customer(self, token: str, order_id: str) -> list[Stream]:
        """TrackOrder of their order (its snapshot read) and StreamNotifications."""
        metadata = bearer(token)
        first = asyncio.Event()
        track = self._track(order_id, metadata, first)
        stub = tracking_service_pb2_grpc.TrackingServiceStub(self._channels("tracking"))
        notes = self._hold(
            "StreamNotifications",
            stub.StreamNotifications(
                tracking_service_pb2.StreamNotificationsRequest(), metadata=metadata
            ),
        )
        await self._opened(track, first)
        return [track, notes]


@dataclass
class Ends:
    """Stream ends of one scenario: latency samples by RPC, and every outcome counted."""

    by_rpc: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    not_opened: int = 0

    def add(self, streams: list[Stream], since: float, expected: str) -> None:
        for stream in streams:
            code, reason, end = stream.outcome()
            self.outcomes[f"{code} {reason}".strip()] += 1
            self.not_opened += stream.speaks_first and not stream.opened
            if (code, reason) == ("UNAUTHENTICATED", expected):
                self.by_rpc[stream.rpc].append(end - since)

    @property
    def all(self) -> list[float]:
        return [s for samples in self.by_rpc.values() for s in samples]

    def print(self, label: str) -> None:
        print(f"  {label:<52} {_summary(self.all)}")
        for rpc, samples in sorted(self.by_rpc.items()):
            print(f"    {rpc:<50} {_summary(samples)}")
        print(f"    outcomes {dict(self.outcomes)}; first message missing {self.not_opened}")


async def _ended(streams: list[Stream]) -> None:
    await asyncio.wait([s.task for s in streams], timeout=BOUND_S)


async def sessions_part(args: argparse.Namespace, database_url: str, work: Path) -> None:
    redis_server = await PrivateRedis(work / "redis-sessions").started()
    services = Services()
    channels: Channels | None = None
    client = make_redis(StoreSettings(redis_url=redis_server.url))
    try:
        rnd = random.Random(args.seed)
        world = await make_world(database_url, redis_server.url, args.sessions, 0, rnd)
        await services.start(GRPC_SERVICES, database_url, redis_server.url, "WARNING")
        later = args.expiring + args.removed
        channels = Channels(
            services.addresses,
            {
                "location": 2 * (args.sessions + later),
                "matching": args.sessions + later,
                "tracking": 3 * args.sessions + later,
            },
        )
        holder = Holder(channels)
        accounts = account_service_pb2_grpc.AccountServiceStub(channels("order"))
        couriers = world["couriers"]  # (driver, token, lat, lng), one per order
        orders = world["orders"]

        async def courier_streams(i: int, token: str) -> list[Stream]:
            driver, _, lat, lng = couriers[i]
            return await holder.courier(token, driver, orders[i], lat, lng)

        # Every session's streams open first: logouts happen with all of them held.
        t_open = time.perf_counter()
        sessions: list[tuple[str, str, list[Stream]]] = []
        for i in range(args.sessions):
            courier_token, customer_token = couriers[i][1], world["watchers"][i][0]
            sessions.append(("courier", courier_token, await courier_streams(i, courier_token)))
            sessions.append(
                ("customer", customer_token, await holder.customer(customer_token, orders[i]))
            )
        open_s = time.perf_counter() - t_open
        # StreamOffers and StreamNotifications send nothing when open: time to be served.
        await asyncio.sleep(2.0)
        held = sum(len(s) for _, _, s in sessions)

        # 1. Logout, one session at a time.
        getme: list[float] = []
        logout: list[float] = []
        revoked, revoked_from_call = Ends(), Ends()
        for _, token, streams in sessions:
            t0 = time.perf_counter()
            await accounts.GetMe(
                account_service_pb2.GetMeRequest(), metadata=bearer(token), timeout=DEADLINE_S
            )
            t1 = time.perf_counter()
            await accounts.Logout(
                account_service_pb2.LogoutRequest(), metadata=bearer(token), timeout=DEADLINE_S
            )
            t2 = time.perf_counter()
            getme.append(t1 - t0)
            logout.append(t2 - t1)
            await _ended(streams)
            revoked.add(streams, t2, "SESSION_REVOKED")
            revoked_from_call.add(streams, t1, "SESSION_REVOKED")

        # 2. Sessions that expire, opened one after the other so their expiries spread.
        store = SessionStore(client, ttl_s=args.ttl, service_secret=SECRET)
        expiring: list[tuple[float, list[Stream]]] = []
        t_first = time.perf_counter()
        for k in range(args.expiring):
            i = k % args.sessions
            t0 = time.perf_counter()
            token = await store.create(couriers[i][0], Role.DRIVER)
            # Redis set the key's expiry between these two instants.
            made = (t0 + time.perf_counter()) / 2
            expiring.append((made + args.ttl, await courier_streams(i, token)))
        spread = expiring[-1][0] - expiring[0][0] if expiring else 0.0
        if expiring and time.perf_counter() - t_first > args.ttl:
            print(f"  (opening the expiring sessions' streams outlasted --ttl {args.ttl} s)")
        expired = Ends()
        for expiry, streams in expiring:
            await _ended(streams)
            expired.add(streams, expiry, "SESSION_EXPIRED")

        # 3. Sessions removed from Redis with no message, each after a random pause so the
        # deletes fall anywhere in the services' check period.
        store = SessionStore(client, ttl_s=3600, service_secret=SECRET)
        doomed: list[tuple[str, list[Stream]]] = []
        for k in range(args.removed):
            i = k % args.sessions
            token = await store.create(couriers[i][0], Role.DRIVER)
            key = (await store.authenticate(token)).session_key
            doomed.append((key, await courier_streams(i, token)))
        await asyncio.sleep(2.0)
        removed = Ends()
        for key, streams in doomed:
            await asyncio.sleep(rnd.uniform(0.0, 1.0))
            await client.delete(key)
            t_deleted = time.perf_counter()
            await _ended(streams)
            removed.add(streams, t_deleted, "SESSION_REVOKED")

        couriers_n, customers_n = args.sessions, args.sessions
        print(
            f"sessions end their streams: {couriers_n} courier sessions x 4 streams "
            f"(StreamLocation, WatchDriverLocation, StreamOffers, TrackOrder) + {customers_n} "
            f"customer sessions x 2 (TrackOrder, StreamNotifications) = {held} streams held on "
            f"4 service processes (opened in {open_s:.1f} s), then logged out one at a time"
        )
        print(f"  baseline GetMe round trip (just before)             {_summary(getme)}")
        print(f"  baseline Logout round trip                          {_summary(logout)}")
        revoked.print("Logout answered -> stream ends UNAUTHENTICATED")
        revoked_from_call.print("Logout sent -> stream ends")
        print(
            "    (below zero: the stream's end reached the client before Logout's answer; the"
            " revocation is published before Logout answers)"
        )
        for label, ends in (("answered", revoked), ("sent", revoked_from_call)):
            if ends.all:
                p50, p99 = quantile(ends.all, 0.5), quantile(ends.all, 0.99)
                print(
                    f"  ratio (Logout {label} -> end) / Logout round trip:".ljust(54)
                    + f"p50 {p50 / quantile(logout, 0.5):6.2f}   p99 "
                    f"{p99 / quantile(logout, 0.99):6.2f}"
                )
        expired.print(
            f"expiry ({args.expiring} sessions, TTL {args.ttl} s, expiries over {spread:.1f} s)"
            " -> ends"
        )
        removed.print(f"key deleted without a message ({args.removed} sessions) -> ends")
        print("    (found by each service's check of its watched sessions, every 1 s)")
    finally:
        if channels is not None:
            await channels.close()
        await services.stop()
        await client.aclose()
        redis_server.stop()


# --- parts redis and postgres -----------------------------------------------------------------


@dataclass
class Call:
    rpc: str
    sent: float
    answered: float = 0.0
    code: str = ""


class OpenLoop:
    """GetMe and CreateOrder in turn, ``rate`` calls/s in all, each with its own deadline."""

    def __init__(self, market: Market, customer: Caller, shop: Any, pizza: Any, rate: float):
        self._market = market
        self._customer = customer
        self._shop = shop
        self._pizza = pizza
        self._rate = rate
        self.calls: list[Call] = []
        self._tasks: set[asyncio.Task[Call]] = set()
        self._stopping = asyncio.Event()

    def _request(self, rpc: str) -> Awaitable[object]:
        market, metadata = self._market, self._customer.metadata
        if rpc == "GetMe":
            return market.accounts.GetMe(  # type: ignore[no-any-return]
                account_service_pb2.GetMeRequest(), metadata=metadata, timeout=DEADLINE_S
            )
        return market.orders.CreateOrder(  # type: ignore[no-any-return]
            market.order_request(self._shop, self._pizza), metadata=metadata, timeout=DEADLINE_S
        )

    async def one(self, rpc: str) -> Call:
        call = Call(rpc, time.perf_counter())
        self.calls.append(call)
        try:
            await self._request(rpc)
            call.code = "OK"
        except grpc.aio.AioRpcError as err:
            call.code = err.code().name
        call.answered = time.perf_counter()
        return call

    async def run(self) -> None:
        due = time.perf_counter()
        for rpc in itertools.cycle(("GetMe", "CreateOrder")):
            due += 1 / self._rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, due - time.perf_counter()))
            if self._stopping.is_set():
                break
            task = asyncio.create_task(self.one(rpc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(self._tasks)

    def stop(self) -> None:
        self._stopping.set()


class HealthPoll:
    """The service's overall health, checked every :data:`HEALTH_EVERY_S`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self.samples: list[tuple[float, str]] = []
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as err:
                status = err.code().name
            self.samples.append((time.perf_counter(), status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEALTH_EVERY_S)

    def first(self, status: str, after: float) -> float | None:
        return next((t for t, s in self.samples if t >= after and s == status), None)

    def stop(self) -> None:
        self._stopping.set()


async def _baseline(loop: OpenLoop, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"GetMe": [], "CreateOrder": []}
    for _ in range(rounds):
        for rpc in out:
            call = await loop.one(rpc)
            if call.code == "OK":
                out[rpc].append(call.answered - call.sent)
    loop.calls.clear()
    return out


async def store_part(
    label: str,
    store: str,
    database_url: str,
    redis_url: str,
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    args: argparse.Namespace,
) -> None:
    services = Services()
    # The service's warnings about the outage are not the bench's output.
    await services.start(("order",), database_url, redis_url, "CRITICAL")
    channel = grpc.aio.insecure_channel(services.addresses["order"])
    try:
        market = Market(channel, Stores(), settings_for_test("order", StoreSettings()))
        owner = await market.sign_up(common_pb2.ROLE_MERCHANT)
        customer = await market.sign_up(common_pb2.ROLE_CUSTOMER)
        shop, pizza = await market.shop(owner)
        loop = OpenLoop(market, customer, shop, pizza, args.rate)
        await _baseline(loop, 20)  # warm-up
        base = await _baseline(loop, args.baseline_calls)

        health = HealthPoll(channel)
        polling = asyncio.create_task(health.run())
        calling = asyncio.create_task(loop.run())
        await asyncio.sleep(2.0)
        t_freeze = time.perf_counter()
        freeze()
        try:
            await asyncio.sleep(args.freeze)
        finally:
            t_thaw = time.perf_counter()
            thaw()

        def recovered() -> bool:
            return health.first("SERVING", t_thaw) is not None and any(
                c.code == "OK" and c.sent >= t_thaw for c in loop.calls
            )

        await _until(recovered)
        await asyncio.sleep(1.0)
        loop.stop()
        health.stop()
        await asyncio.gather(calling, polling)

        print(
            f"{label}: order_svc alone on {store}; frozen {args.freeze:.0f} s (SIGSTOP) under "
            f"{args.rate:.0f} calls/s open loop (GetMe, CreateOrder in turn), {DEADLINE_S:.0f} s "
            "deadline each"
        )
        shipped = StoreSettings()
        print(
            f"  (shipped settings: Redis reply timeout {shipped.redis_timeout_s} s, connect "
            f"{shipped.redis_connect_timeout_s} s; PostgreSQL statement "
            f"{shipped.db_command_timeout_s} s, pool acquire {shipped.db_acquire_timeout_s} s, "
            f"connect {shipped.db_connect_timeout_s} s; store probe every "
            f"{shipped.probe_every_s} s with a {shipped.probe_timeout_s} s timeout, "
            f"{FAILURES_TO_TRIP} failures in a row to turn NOT_SERVING)"
        )
        for rpc in ("GetMe", "CreateOrder"):
            mine = [c for c in loop.calls if c.rpc == rpc]
            # Calls the freeze caught: answered after it began, sent before it ended.
            caught = [c for c in mine if c.answered > t_freeze and c.sent < t_thaw]
            failed = [c for c in caught if c.code != "OK"]
            waits = [c.answered - max(c.sent, t_freeze) for c in failed]
            while_frozen = collections.Counter(c.code for c in caught if c.answered < t_thaw)
            after = collections.Counter(c.code for c in caught if c.answered >= t_thaw)
            print(f"  {rpc:<12} baseline before the freeze            {_summary(base[rpc])}")
            print(f"  {rpc:<12} freeze (or call) -> error answer      {_summary(waits)}")
            print(
                f"    the {len(caught)} calls the freeze caught: answered while frozen "
                f"{dict(while_frozen) or 0}, after SIGCONT {dict(after) or 0}"
            )
            if waits and base[rpc]:
                print(
                    f"    ratio to the baseline: p50 "
                    f"{quantile(waits, 0.5) / quantile(base[rpc], 0.5):7.0f}x  (the answer is "
                    f"{quantile(waits, 0.5) / DEADLINE_S:.1%} of the client's deadline)"
                )
        down = health.first("NOT_SERVING", t_freeze)
        up = health.first("SERVING", t_thaw)
        ok_after = min(
            (c.answered for c in loop.calls if c.code == "OK" and c.sent >= t_thaw), default=None
        )
        failed_after = collections.Counter(
            c.code for c in loop.calls if c.sent >= t_thaw and c.code != "OK"
        )
        print(
            "  health NOT_SERVING after the freeze              "
            + (_ms(down - t_freeze) if down is not None else "never seen")
            + f"   (checked every {HEALTH_EVERY_S * 1000:.0f} ms)"
        )
        print(
            "  health SERVING after SIGCONT                     "
            + (_ms(up - t_thaw) if up is not None else "never seen")
        )
        print(
            "  first call answered OK after SIGCONT             "
            + (_ms(ok_after - t_thaw) if ok_after is not None else "never seen")
            + f"   (calls sent after SIGCONT that failed: {dict(failed_after) or 0})"
        )
    finally:
        await channel.close()
        await services.stop()


async def redis_part(args: argparse.Namespace, database_url: str, work: Path) -> None:
    redis_server = await PrivateRedis(work / "redis-frozen").started()
    try:
        await store_part(
            "frozen Redis",
            f"a redis-server of the bench's own (port {redis_server.port}) and the scratch "
            "database",
            database_url,
            redis_server.url,
            redis_server.freeze,
            redis_server.thaw,
            args,
        )
    finally:
        redis_server.stop()


async def postgres_part(args: argparse.Namespace, work: Path) -> None:
    try:
        postgres = await asyncio.to_thread(PrivatePostgres)
        await asyncio.to_thread(postgres.start)
    except Exception as exc:
        print(f"frozen PostgreSQL: skipped, no PostgreSQL of the bench's own could start ({exc})")
        return
    redis_server = await PrivateRedis(work / "redis-pg").started()
    try:
        await migrate(postgres.url)
        version = await asyncio.to_thread(lambda: postgres.version)
        await store_part(
            "frozen PostgreSQL",
            f"a PostgreSQL cluster of the bench's own ({version}, initdb from {postgres.bin}, "
            f"port {postgres.port}; postmaster and backends frozen, the shared 5432 untouched) "
            "and a redis-server of its own",
            postgres.url,
            redis_server.url,
            postgres.freeze,
            postgres.thaw,
            args,
        )
    finally:
        redis_server.stop()
        await asyncio.to_thread(postgres.remove)


# --- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    name = f"delivery_bench_{uuid.uuid4().hex[:8]}"
    database_url = f"{args.database_url.rpartition('/')[0]}/{name}"
    work = Path(tempfile.mkdtemp(prefix="delivery-bench-faults-"))
    started = time.perf_counter()
    print(
        f"faults, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    try:
        if {"sessions", "redis"} & set(args.parts):
            await migrate(database_url)
        if "sessions" in args.parts:
            await sessions_part(args, database_url, work)
        if "redis" in args.parts:
            await redis_part(args, database_url, work)
        if "postgres" in args.parts:
            await postgres_part(args, work)
        print(f"  ({time.perf_counter() - started:.0f} s in all)")
        print("reproduce: .venv/bin/python bench/faults.py " + " ".join(sys.argv[1:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        default="sessions,redis,postgres",
        help="comma-separated: sessions,redis,postgres",
    )
    parser.add_argument("--sessions", type=int, default=100, help="courier and customer pairs")
    parser.add_argument("--expiring", type=int, default=40, help="courier sessions that expire")
    parser.add_argument("--ttl", type=int, default=6, help="their lifetime in seconds")
    parser.add_argument("--removed", type=int, default=40, help="sessions deleted from Redis")
    parser.add_argument("--freeze", type=float, default=8.0, help="seconds each store is frozen")
    parser.add_argument("--rate", type=float, default=20.0, help="calls/s while freezing")
    parser.add_argument("--baseline-calls", type=int, default=100, help="of each RPC")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url", default=os.environ.get("DELIVERY_DATABASE_URL", DEFAULT_PG)
    )
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - {"sessions", "redis", "postgres"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    _run(run, args)


if __name__ == "__main__":
    main()
