"""StreamNotifications over real gRPC and PostgreSQL: order transitions through a real order_svc
reach the customer live, in order and nobody else; resuming after a disconnect gets what was
missed; a lost LISTEN connection is made again; many streams share one LISTEN connection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2

from delivery.common.v1 import common_pb2
from delivery.order.v1 import order_pb2, order_service_pb2
from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from mesh.auth import Role, current_principal
from mesh.errors import PermissionDenied
from mesh.server import MeshServer, ServiceBinding, build_mesh_server
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration import rows
from tests.integration.marketplace import Caller, Market, details
from tests.polling import eventually
from tracking_svc.notifications import APPLICATION_NAME, NotificationHub

CUSTOMER, MERCHANT = common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_MERCHANT
T = order_pb2


class _Servicer(tracking_service_pb2_grpc.TrackingServiceServicer):
    """StreamNotifications as tracking_svc's servicer serves it."""

    def __init__(self, hub: NotificationHub) -> None:
        self._hub = hub

    async def StreamNotifications(
        self,
        request: tracking_service_pb2.StreamNotificationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tracking_service_pb2.StreamNotificationsResponse]:
        principal = current_principal()
        if principal.is_service:
            raise PermissionDenied("services have no notification feed")
        async for response in self._hub.stream(principal.subject, request.resume_after_sequence):
            yield response


class GatedHub(NotificationHub):
    """A hub whose reconnections wait for the test to open :attr:`gate`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.gate.set()
        self.connects = 0

    async def _connect(self) -> asyncpg.Connection:
        await self.gate.wait()
        self.connects += 1
        return await super()._connect()


@dataclass
class Feed:
    """One open notification stream, read into :attr:`received` by a task."""

    call: grpc.aio.UnaryStreamCall
    received: list[tracking_service_pb2.StreamNotificationsResponse] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        async for response in self.call:
            self.received.append(response)

    async def at_least(self, count: int) -> list[tracking_service_pb2.StreamNotificationsResponse]:
        await eventually(lambda: len(self.received) >= count or self.done())
        assert len(self.received) >= count, self.task
        return self.received

    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self.task


@dataclass
class Setup:
    market: Market
    feeds: tracking_service_pb2_grpc.TrackingServiceStub
    hub: GatedHub
    pool: asyncpg.Pool
    opened: list[Feed]

    async def open(self, caller: Caller, resume_after: int = 0, *, started: bool = True) -> Feed:
        """Opens a stream; with ``started`` waits until the hub has read where it starts."""
        before = self.hub.streams_started
        feed = Feed(
            self.feeds.StreamNotifications(
                tracking_service_pb2.StreamNotificationsRequest(resume_after_sequence=resume_after),
                metadata=caller.metadata,
            )
        )
        feed.task = asyncio.create_task(feed._read())
        self.opened.append(feed)
        if started:
            await eventually(lambda: self.hub.streams_started > before or feed.done())
        return feed

    async def note(self, recipient: str, title: str) -> int:
        """A notification inserted straight into the table, as any writer would."""
        return int(
            await self.pool.fetchval(
                "INSERT INTO notifications (recipient_id, type, title)"
                " VALUES ($1::uuid, 'eta_delayed', $2) RETURNING id",
                recipient,
                title,
            )
        )

    async def ids_of(self, recipient: str, order_id: str) -> list[int]:
        rows_ = await self.pool.fetch(
            "SELECT id FROM notifications WHERE recipient_id = $1::uuid AND order_id = $2::uuid"
            " ORDER BY id",
            recipient,
            order_id,
        )
        return [r["id"] for r in rows_]


@pytest.fixture
async def setup(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Setup]:
    assert stores.pool is not None
    order_settings = settings_for_test("order", store_settings)
    hub = GatedHub(stores.pool, store_settings.database_url, retry_s=0.05)

    async def build_feed(settings: Settings, stores: Stores) -> MeshServer:
        binding = ServiceBinding(
            tracking_service_pb2.DESCRIPTOR.services_by_name["TrackingService"].full_name,
            _Servicer(hub),
            tracking_service_pb2_grpc.add_TrackingServiceServicer_to_server,
        )
        server = build_mesh_server(settings, stores, [binding])
        server.add_worker(hub.run, hub.stop)
        return server

    opened: list[Feed] = []
    async with (
        serving(build_order, order_settings, stores) as (_, order_channel),
        serving(build_feed, settings_for_test("tracking", store_settings), stores) as (_, ch),
    ):
        await hub.listening.wait()
        try:
            yield Setup(
                Market(order_channel, stores, order_settings),
                tracking_service_pb2_grpc.TrackingServiceStub(ch),
                hub,
                stores.pool,
                opened,
            )
        finally:
            for feed in opened:
                await feed.close()


async def _order(market: Market) -> tuple[Caller, Caller, str]:
    """A customer's new order at a new shop: the owner, the customer and the order id."""
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order
    return owner, customer, order.order_id


async def _confirm_and_prepare(market: Market, owner: Caller, order_id: str) -> None:
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(
            order_id=order_id, estimated_prep_duration=duration_pb2.Duration(seconds=600)
        ),
        metadata=owner.metadata,
    )
    await market.orders.StartPreparing(
        order_service_pb2.StartPreparingRequest(order_id=order_id), metadata=owner.metadata
    )


async def test_a_customer_hears_their_order_live_and_in_order_and_nobody_else_does(
    setup: Setup,
) -> None:
    market = setup.market
    owner = await market.sign_up(MERCHANT)
    customer = await market.sign_up(CUSTOMER)
    stranger = await market.sign_up(CUSTOMER)
    shop, pizza = await market.shop(owner)
    mine = await setup.open(customer)
    theirs = await setup.open(stranger)

    order_id = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order.order_id
    await _confirm_and_prepare(market, owner, order_id)
    await market.orders.MarkOrderReady(
        order_service_pb2.MarkOrderReadyRequest(order_id=order_id), metadata=owner.metadata
    )

    got = await mine.at_least(4)
    assert [r.notification.type for r in got] == [
        T.NOTIFICATION_TYPE_ORDER_PLACED,
        T.NOTIFICATION_TYPE_ORDER_CONFIRMED,
        T.NOTIFICATION_TYPE_ORDER_PREPARING,
        T.NOTIFICATION_TYPE_ORDER_READY_FOR_PICKUP,
    ]
    assert [r.sequence for r in got] == await setup.ids_of(customer.user_id, order_id)
    assert all(str(r.sequence) == r.notification.notification_id for r in got)
    assert {r.notification.order_id for r in got} == {order_id}

    # The stranger's first notification is the one made for them after all of the order's.
    marker = await setup.note(stranger.user_id, "for the stranger")
    first = (await theirs.at_least(1))[0]
    assert first.sequence == marker and first.notification.title == "for the stranger"
    # And the customer got nothing of the stranger's.
    after = await setup.note(customer.user_id, "for the customer")
    assert (await mine.at_least(5))[4].sequence == after


async def test_resuming_after_a_disconnect_gets_exactly_what_was_missed(setup: Setup) -> None:
    market = setup.market
    owner, customer, order_id = await _order(market)
    first = await setup.open(customer)
    await _confirm_and_prepare(market, owner, order_id)
    held = await first.at_least(2)
    assert [r.notification.type for r in held] == [
        T.NOTIFICATION_TYPE_ORDER_CONFIRMED,
        T.NOTIFICATION_TYPE_ORDER_PREPARING,
    ]
    await first.close()

    # While the phone sleeps: the order is ready and is cancelled, and another notice comes.
    await market.orders.MarkOrderReady(
        order_service_pb2.MarkOrderReadyRequest(order_id=order_id), metadata=owner.metadata
    )
    await market.orders.CancelOrder(
        order_service_pb2.CancelOrderRequest(order_id=order_id, reason=T.CANCEL_REASON_OTHER),
        metadata=(await market.admin()).metadata,
    )
    other = await setup.note(customer.user_id, "meanwhile")
    all_ids = await setup.ids_of(customer.user_id, order_id)
    missed = [i for i in all_ids if i > held[-1].sequence] + [other]
    assert len(missed) == 3

    resume = held[-1].sequence
    again = await setup.open(customer, resume)
    # A resume also re-reads a short window at or below its sequence (late commits): the client
    # drops what it holds; the rest of that window (the order's placement, made just before the
    # first stream opened) may come again too, below the resume sequence.
    have = {r.notification.notification_id for r in held}

    def fresh() -> list[int]:
        return [
            r.sequence
            for r in again.received
            if r.sequence > resume and r.notification.notification_id not in have
        ]

    await eventually(lambda: len(fresh()) >= len(missed) or again.done())
    assert fresh() == missed
    assert [r.notification.type for r in again.received if r.sequence in missed] == [
        T.NOTIFICATION_TYPE_ORDER_READY_FOR_PICKUP,
        T.NOTIFICATION_TYPE_ORDER_CANCELLED,
        T.NOTIFICATION_TYPE_ETA_DELAYED,
    ]
    window = [r.sequence for r in again.received if r.sequence <= resume]
    assert set(window) <= set(all_ids[: all_ids.index(resume) + 1])
    # Nothing else: the next new one is the next one made.
    later = await setup.note(customer.user_id, "later")
    await eventually(lambda: len(fresh()) > len(missed) or again.done())
    assert fresh() == [*missed, later]


async def test_a_resume_from_the_future_is_invalid_argument(setup: Setup) -> None:
    customer = await setup.market.sign_up(CUSTOMER)
    newest = int(await setup.pool.fetchval("SELECT coalesce(max(id), 0) FROM notifications"))
    for sequence in (newest + 1, 2**64 - 1):
        feed = await setup.open(customer, sequence, started=False)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            assert feed.task is not None
            await feed.task
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value) == ("SEQUENCE_FROM_THE_FUTURE", ["resume_after_sequence"])
    # The newest itself is a fine place to resume from.
    feed = await setup.open(customer, newest)
    assert not feed.done()


async def test_a_service_and_a_stranger_to_the_feed_are_refused(setup: Setup) -> None:
    feed = Feed(
        setup.feeds.StreamNotifications(
            tracking_service_pb2.StreamNotificationsRequest(), metadata=setup.market.matching
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feed._read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # An admin whose subject is not a user id (as no real one is) gets INVALID_ARGUMENT, not
    # a database error.
    odd = await setup.market.session_for("not-a-uuid", Role.ADMIN)
    feed = Feed(
        setup.feeds.StreamNotifications(
            tracking_service_pb2.StreamNotificationsRequest(), metadata=odd.metadata
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feed._read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _listeners(pool: asyncpg.Pool) -> list[int]:
    return [
        r["pid"]
        for r in await pool.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            APPLICATION_NAME,
        )
    ]


async def test_a_killed_listen_connection_is_made_again_and_nothing_is_lost(
    setup: Setup,
) -> None:
    market, hub = setup.market, setup.hub
    owner, customer, order_id = await _order(market)
    feed = await setup.open(customer)
    old = hub.backend_pid
    assert old is not None and await _listeners(setup.pool) == [old]
    losses = hub.losses

    # Reconnections wait until the notifications below are made: they are made while nobody
    # listens.
    hub.gate.clear()
    assert await setup.pool.fetchval("SELECT pg_terminate_backend($1)", old)
    await eventually(lambda: hub.losses > losses and not hub.listening.is_set())
    await _confirm_and_prepare(market, owner, order_id)
    made = await setup.ids_of(customer.user_id, order_id)
    assert len(made) == 3  # placed (before the stream), confirmed, preparing
    assert not hub.listening.is_set()

    hub.gate.set()
    got = await feed.at_least(2)
    assert [r.sequence for r in got] == made[1:]
    assert hub.backend_pid not in (None, old)
    assert await _listeners(setup.pool) == [hub.backend_pid]
    # And live again after it.
    live = await setup.note(customer.user_id, "after the reconnect")
    assert (await feed.at_least(3))[2].sequence == live


async def test_many_streams_share_one_listen_connection(setup: Setup) -> None:
    users = 100
    async with setup.pool.acquire() as conn:
        ids = [await rows.user(conn, "customer") for _ in range(users)]
    callers = [await setup.market.session_for(i, Role.CUSTOMER) for i in ids]
    backends_before = await setup.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    )
    started = setup.hub.streams_started
    feeds: list[tuple[str, Feed]] = []
    for caller in callers:
        for _ in range(2):
            feeds.append((caller.user_id, await setup.open(caller, started=False)))
    await eventually(lambda: setup.hub.streams_started >= started + 2 * users)
    assert setup.hub.open_streams >= 2 * users

    made = {i: await setup.note(i, f"for {i}") for i in ids}
    for user_id, feed in feeds:
        first = (await feed.at_least(1))[0]
        assert first.sequence == made[user_id]
    assert await _listeners(setup.pool) == [setup.hub.backend_pid]
    backends = await setup.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    )
    # Streams hold no connection of their own: at most the pool grew.
    assert backends - backends_before <= setup.pool.get_max_size()

    # A second round to the same streams: each gets exactly its own next one.
    again = {i: await setup.note(i, f"again {uuid.uuid4().hex[:6]}") for i in ids}
    for user_id, feed in feeds:
        assert [r.sequence for r in await feed.at_least(2)] == [made[user_id], again[user_id]]
