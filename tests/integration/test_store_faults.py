"""One fault stays one fault at the stores: a frozen, stopped or restarted Redis or PostgreSQL
makes calls fail fast with UNAVAILABLE, health follows the stores, and everything recovers by
itself; background workers that fail are restarted.

Real processes throughout: private redis-server and PostgreSQL clusters that the tests freeze
(SIGSTOP), thaw, stop and start, and order_svc as a process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc

from delivery.common.v1 import common_pb2
from delivery.order.v1 import account_service_pb2, order_service_pb2
from mesh.embedded import free_port, redis_server_binary, tcp_reachable
from mesh.health_watch import StoreWatch, store_probes
from mesh.migrate import migrate
from mesh.server import MeshServer, build_grpc_server
from mesh.settings import ServerSettings, StoreSettings
from mesh.stores import Stores, db_pool, make_redis
from mesh.testing import settings_for_test, spawn
from order_svc.server import ACCOUNT_SERVICE, MERCHANT_SERVICE, ORDER_SERVICE
from tests.integration.marketplace import Caller, Market
from tests.polling import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ORDER_HEALTH_NAMES = ("", ACCOUNT_SERVICE, MERCHANT_SERVICE, ORDER_SERVICE)
#: The clients' deadline: far longer than any store timeout, so an answer before it is an answer
#: of the service, not of the client giving up.
DEADLINE_S = 60.0


class PrivateRedis:
    """A redis-server of the test's own, which it may freeze and thaw."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def started(self) -> PrivateRedis:
        await eventually(lambda: tcp_reachable("127.0.0.1", self.port, 0.2), every_s=0.05)
        return self

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.process.kill()
        self.process.wait()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    try:
        yield await server.started()
    finally:
        server.stop()


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
    """A PostgreSQL cluster of the test's own (initdb in a temporary directory, a free port),
    which it may freeze, thaw, stop and start."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        # PostgreSQL refuses to run as root; then it runs as the system's postgres user.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="delivery-pg-"))
        self.data = self.dir / "data"
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/delivery_faults"
        self._frozen: list[int] = []

    def _run(self, tool: str, *args: str) -> None:
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

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

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
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    server = await asyncio.to_thread(PrivatePostgres)
    try:
        await asyncio.to_thread(server.start)
        await migrate(server.url)
        yield server
    finally:
        await asyncio.to_thread(server.remove)


@contextlib.asynccontextmanager
async def order_process(
    database_url: str, redis_url: str, log: Path | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """order_svc as a process of its own on the given stores, with the shipped store timeouts
    (its logs in ``log`` when given)."""
    process, ports = await spawn(
        [sys.executable, "-m", "order_svc"],
        {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": redis_url,
            "DELIVERY_ORDER_LISTEN": "127.0.0.1:0",
            "DELIVERY_GRACE_S": "1",
        },
        stderr_path=log,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['order']}")
    try:
        yield channel
    finally:
        await channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _health(channel: grpc.aio.Channel, names: tuple[str, ...]) -> set[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    replies = [
        await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=DEADLINE_S)
        for name in names
    ]
    return {reply.status for reply in replies}


async def _health_becomes(
    channel: grpc.aio.Channel, status: int, names: tuple[str, ...] = ORDER_HEALTH_NAMES
) -> None:
    async def reached() -> bool:
        return await _health(channel, names) == {status}

    await eventually(reached, every_s=0.2)


#: Calls refused while a store is frozen, in the test that counts the log lines they cause.
REFUSED_DURING_OUTAGE = 20


async def _refused(call: asyncio.Future[object] | object) -> grpc.StatusCode:
    """The status code a call that must fail ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def _list_orders(market: Market, customer: Caller) -> order_service_pb2.ListOrdersResponse:
    return await market.orders.ListOrders(
        order_service_pb2.ListOrdersRequest(page_size=10),
        metadata=customer.metadata,
        timeout=DEADLINE_S,
    )


async def test_frozen_redis_fails_order_calls_fast_and_health_follows_it(
    store_settings: StoreSettings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    settings = settings_for_test("order", replace(store_settings, redis_url=private_redis.url))
    log = tmp_path / "order_svc.log"
    async with order_process(store_settings.database_url, private_redis.url, log) as channel:
        market = Market(channel, Stores(), settings)
        customer = await market.sign_up(common_pb2.ROLE_CUSTOMER)
        assert await _health(channel, ORDER_HEALTH_NAMES) == {SERVING}

        private_redis.freeze()
        try:
            # Every authenticated call reads its session from Redis.
            assert await _refused(_list_orders(market, customer)) == grpc.StatusCode.UNAVAILABLE
            me = [
                market.accounts.GetMe(
                    account_service_pb2.GetMeRequest(),
                    metadata=customer.metadata,
                    timeout=DEADLINE_S,
                )
                for _ in range(REFUSED_DURING_OUTAGE)
            ]
            codes = await asyncio.gather(*(_refused(call) for call in me))
            assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
            await _health_becomes(channel, NOT_SERVING)
        finally:
            private_redis.thaw()

        await _health_becomes(channel, SERVING)
        assert list((await _list_orders(market, customer)).orders) == []
    # One outage, a few lines: no traceback per refused call (before, each of the calls above
    # logged one at ERROR).
    text = log.read_text(errors="replace")
    failed = [line for line in text.splitlines() if "rpc failed" in line]
    assert "Traceback" not in text, text[-4000:]
    assert 1 <= len(failed) < REFUSED_DURING_OUTAGE // 4, failed
    assert all(" WARNING " in line for line in failed), failed


async def test_frozen_postgresql_fails_order_calls_fast_and_they_recover_by_themselves(
    store_settings: StoreSettings, private_postgres: PrivatePostgres
) -> None:
    settings = settings_for_test("order", store_settings)
    async with order_process(private_postgres.url, store_settings.redis_url) as channel:
        market = Market(channel, Stores(), settings)
        owner = await market.sign_up(common_pb2.ROLE_MERCHANT)
        customer = await market.sign_up(common_pb2.ROLE_CUSTOMER)
        shop, pizza = await market.shop(owner)

        private_postgres.freeze()
        try:
            listing = _list_orders(market, customer)
            assert await _refused(listing) == grpc.StatusCode.UNAVAILABLE
            placing = market.orders.CreateOrder(
                market.order_request(shop, pizza), metadata=customer.metadata, timeout=DEADLINE_S
            )
            assert await _refused(placing) == grpc.StatusCode.UNAVAILABLE
            await _health_becomes(channel, NOT_SERVING)
        finally:
            private_postgres.thaw()

        await _health_becomes(channel, SERVING)
        placed = await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata, timeout=DEADLINE_S
        )
        listed = await _list_orders(market, customer)
        assert [o.order_id for o in listed.orders] == [placed.order.order_id]


async def test_postgresql_stopped_and_started_order_calls_fail_fast_and_recover_by_themselves(
    store_settings: StoreSettings, private_postgres: PrivatePostgres
) -> None:
    settings = settings_for_test("order", store_settings)
    async with order_process(private_postgres.url, store_settings.redis_url) as channel:
        market = Market(channel, Stores(), settings)
        owner = await market.sign_up(common_pb2.ROLE_MERCHANT)
        customer = await market.sign_up(common_pb2.ROLE_CUSTOMER)
        shop, pizza = await market.shop(owner)
        before = await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata, timeout=DEADLINE_S
        )

        await asyncio.to_thread(private_postgres.stop, "fast")
        try:
            for _ in range(3):
                listing = _list_orders(market, customer)
                assert await _refused(listing) == grpc.StatusCode.UNAVAILABLE
                placing = market.orders.CreateOrder(
                    market.order_request(shop, pizza),
                    metadata=customer.metadata,
                    timeout=DEADLINE_S,
                )
                assert await _refused(placing) == grpc.StatusCode.UNAVAILABLE
            await _health_becomes(channel, NOT_SERVING)
        finally:
            await asyncio.to_thread(private_postgres.start)

        # No restart of order_svc: its pool connects again on its own.
        await _health_becomes(channel, SERVING)
        after = await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata, timeout=DEADLINE_S
        )
        listed = await _list_orders(market, customer)
        assert {o.order_id for o in listed.orders} == {before.order.order_id, after.order.order_id}


async def test_blocking_reads_outlast_the_command_timeout(store_settings: StoreSettings) -> None:
    # Replies are bounded by 0.2 s, yet reads that block for longer by design still work.
    client = make_redis(replace(store_settings, redis_timeout_s=0.2))
    stream = f"test-block-{os.urandom(4).hex()}"
    try:
        await client.xgroup_create(stream, "g", id="$", mkstream=True)
        assert not await client.xreadgroup("g", "c", {stream: ">"}, count=1, block=1000)
        assert await client.blpop([f"{stream}:list"], timeout=1) is None
        pipe = client.pipeline(transaction=False)
        pipe.xreadgroup("g", "c", {stream: ">"}, count=1, block=600)
        pipe.ping()
        assert (await pipe.execute())[1] is True
        # The client still bounds ordinary replies after a blocking one.
        assert await client.ping() is True
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_a_frozen_redis_bounds_every_reply_blocking_reads_included(
    store_settings: StoreSettings, private_redis: PrivateRedis
) -> None:
    client = make_redis(replace(store_settings, redis_url=private_redis.url, redis_timeout_s=0.3))
    try:
        await client.xgroup_create("s", "g", id="$", mkstream=True)
        private_redis.freeze()
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.get("k")
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.xreadgroup("g", "c", {"s": ">"}, count=1, block=200)
        private_redis.thaw()
        assert await client.ping() is True
    finally:
        private_redis.thaw()
        await client.aclose()


async def test_a_busy_pool_refuses_a_caller_after_the_acquire_timeout(
    store_settings: StoreSettings,
) -> None:
    settings = replace(store_settings, db_pool_min=1, db_pool_max=1, db_acquire_timeout_s=0.2)
    async with db_pool(settings) as pool:
        async with pool.acquire():
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 1")
        assert await pool.fetchval("SELECT 1") == 1


async def test_a_statement_on_a_frozen_postgresql_times_out(
    private_postgres: PrivatePostgres, store_settings: StoreSettings
) -> None:
    settings = replace(store_settings, database_url=private_postgres.url, db_command_timeout_s=0.5)
    async with db_pool(settings) as pool:
        assert await pool.fetchval("SELECT 1") == 1
        private_postgres.freeze()
        try:
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 1")
            # The caller did not wait for the statement's cancellation, which cannot reach a
            # frozen server: the connection goes back to the pool once that is settled.
            assert len(pool._settling) == 1  # type: ignore[attr-defined]
        finally:
            private_postgres.thaw()
        await eventually(lambda: _answers(pool), every_s=0.1)


async def _answers(pool: asyncpg.Pool) -> bool:
    try:
        return bool(await pool.fetchval("SELECT 1") == 1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


def _watched_server(redis_url: str, every_s: float = 0.1) -> tuple[MeshServer, object]:
    server = build_grpc_server(ServerSettings(listen="127.0.0.1:0"), [])
    client = make_redis(StoreSettings(redis_url=redis_url, redis_timeout_s=0.5))
    probes = store_probes(Stores(redis=client), timeout_s=0.5)
    server.watch_stores(StoreWatch(probes, every_s=every_s, timeout_s=0.5))
    return server, client


async def test_stop_turns_health_not_serving_for_good_though_the_store_comes_back(
    private_redis: PrivateRedis,
) -> None:
    server, client = _watched_server(private_redis.url)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        await _health_becomes(channel, SERVING, ("",))
        private_redis.freeze()
        await _health_becomes(channel, NOT_SERVING, ("",))
        private_redis.thaw()
        await _health_becomes(channel, SERVING, ("",))
        private_redis.freeze()
        await _health_becomes(channel, NOT_SERVING, ("",))

        # Stopping does not wait for the frozen store's probe, and what the watch might still
        # say afterwards (the store answers again) cannot turn health back to SERVING.
        await server.stop(0)
        private_redis.thaw()
        await server.health.set("", SERVING)
        status = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert status.status == NOT_SERVING
    finally:
        await channel.close()
        await server.stop(0)
        await client.aclose()  # type: ignore[attr-defined]


class _Flaky:
    """A worker that fails its first ``failures`` runs, then runs until stopped."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"run {self.runs} broke")
        await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()


async def test_a_worker_that_fails_is_logged_counted_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = build_grpc_server(ServerSettings(listen="127.0.0.1:0"), [])
    flaky = _Flaky(failures=2)
    done_once = 0

    async def once() -> None:
        nonlocal done_once
        done_once += 1

    server.add_worker(flaky.run, flaky.stop)
    server.add_worker(once, lambda: None)
    caplog.set_level(logging.ERROR, logger="mesh.server")
    await server.start()
    try:
        await eventually(lambda: flaky.runs == 3)
        failures = server.metrics.get_sample_value(
            "delivery_worker_failures_total", {"worker": "_Flaky.run"}
        )
        assert failures == 2
        logged = [r for r in caplog.records if "worker _Flaky.run failed" in r.getMessage()]
        assert len(logged) == 2
        assert all(r.exc_info and "broke" in str(r.exc_info[1]) for r in logged)
    finally:
        await server.stop(0)
    # A worker that returns is done, not restarted; stopping ends the restarted one.
    assert done_once == 1
    assert flaky.runs == 3


@pytest.mark.parametrize("service", ["location", "matching", "tracking"])
async def test_every_service_turns_not_serving_while_redis_is_frozen_and_back_by_itself(
    store_settings: StoreSettings, private_redis: PrivateRedis, service: str
) -> None:
    # Each service's health follows the stores it was started with, not only order_svc's: the
    # watch is wired by the one server builder every service uses.
    process, ports = await spawn(
        [sys.executable, "-m", f"{service}_svc"],
        {
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": private_redis.url,
            f"DELIVERY_{service.upper()}_LISTEN": "127.0.0.1:0",
            "DELIVERY_GRACE_S": "1",
        },
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[service]}")
    try:
        await _health_becomes(channel, SERVING, names=("",))
        private_redis.freeze()
        try:
            await _health_becomes(channel, NOT_SERVING, names=("",))
        finally:
            private_redis.thaw()
        await _health_becomes(channel, SERVING, names=("",))
    finally:
        await channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
