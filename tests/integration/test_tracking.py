"""TrackOrder end to end: order, location, matching and tracking as separate gRPC servers on
real sockets, real PostgreSQL and Redis. People act only through the RPCs; the courier's phone
streams its fixes to location_svc; tracking hears the order's events from order_svc's outbox
relay and the courier's positions from location_svc."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import cast

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import merchant_pb2, order_pb2, order_service_pb2
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2, tracking_service_pb2_grpc
from location_svc.server import build_server as build_location
from location_svc.store.drivers import DriverStore
from location_svc.watch import PositionHub
from matching_svc.dispatcher import DispatchRules
from matching_svc.server import build_server as build_matching
from mesh.auth import Principal, Role, reset_principal, set_principal
from mesh.server import MeshServer
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Caller, Market, details, north
from tests.polling import eventually
from tracking_svc.domain.eta import EtaRules
from tracking_svc.domain.roads import RoadTravelTimes
from tracking_svc.domain.routing import Stop, StopKind, evaluate_route
from tracking_svc.domain.travel import Point, Vehicle
from tracking_svc.live import LiveRules, TrackingHub
from tracking_svc.server import build_server as build_tracking
from tracking_svc.service import TrackingService
from tracking_svc.settings import TrackingSettings

#: How long any one thing may take to travel through the mesh before the test gives up.
BOUND_S = 30.0
#: Central Helsinki, inside the loaded road network.
HELSINKI = common_pb2.LatLng(latitude=60.1680, longitude=24.9410)
S = common_pb2
STALE_S = 1.5


@dataclass
class Mesh:
    market: Market
    location: location_service_pb2_grpc.LocationServiceStub
    matching: matching_service_pb2_grpc.MatchingServiceStub
    tracking: tracking_service_pb2_grpc.TrackingServiceStub
    stores: Stores
    store_settings: StoreSettings
    location_port: int
    #: Starts a tracking server (another after a restart); returns its server and hub.
    start_tracking: Callable[[], contextlib.AbstractAsyncContextManager[MeshServer]]
    #: Stops the tracking server the fixture started.
    stop_tracking: Callable[[], Awaitable[None]]
    hubs: list[TrackingHub]
    #: location_svc's watch hub: its upstream streams, seen from location_svc's side.
    location_hub: PositionHub


@pytest.fixture
async def mesh(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Mesh]:
    order_settings = settings_for_test("order", store_settings)
    location_settings = settings_for_test("location", store_settings)
    matching_settings = settings_for_test("matching", store_settings)
    tracking_settings = settings_for_test("tracking", store_settings)
    # Only this test's events: the shared test Redis keeps older runs' streams.
    suffix = uuid.uuid4().hex[:8]
    hubs: list[TrackingHub] = []
    assert stores.redis is not None and stores.pool is not None
    location_hub = PositionHub(stores.redis, DriverStore(stores.redis, stores.pool))

    async def location_server(settings: Settings, stores: Stores) -> MeshServer:
        return await build_location(settings, stores, hub=location_hub)

    async with serving(location_server, location_settings, stores) as (location, location_ch):

        async def matching(settings: Settings, stores: Stores) -> MeshServer:
            return await build_matching(
                settings,
                stores,
                location_addr=f"127.0.0.1:{location.port}",
                # One empty search ends a round: the no-courier notice comes at once.
                rules=DispatchRules(max_attempts=1, search_again_s=0.2),
                tick_s=0.05,
                group_start_id="$",
                consumer_group=f"matching-{suffix}",
            )

        async def tracking(settings: Settings, stores: Stores) -> MeshServer:
            server = await build_tracking(
                settings,
                stores,
                tracking=TrackingSettings(
                    live=LiveRules(stale_after_s=STALE_S, linger_s=0.5, route_every_s=0.3)
                ),
                location_addr=f"127.0.0.1:{location.port}",
                group_start_id="$",
                consumer_group=f"tracking-{suffix}",
            )
            hubs.append(server.tracking_hub)  # type: ignore[attr-defined]
            return server

        port = {"tracking": 0}

        @contextlib.asynccontextmanager
        async def start_tracking() -> AsyncIterator[MeshServer]:
            settings = tracking_settings
            if port["tracking"]:
                # A restart binds the port the clients know.
                settings = replace(
                    settings,
                    server=replace(settings.server, listen=f"127.0.0.1:{port['tracking']}"),
                )
            async with serving(tracking, settings, stores) as (server, _):
                port["tracking"] = server.port
                yield server

        async with (
            serving(build_order, order_settings, stores) as (_, order_ch),
            serving(matching, matching_settings, stores) as (_, matching_ch),
        ):
            first = start_tracking()
            await first.__aenter__()
            stopped = False

            async def stop_tracking() -> None:
                nonlocal stopped
                stopped = True
                await first.__aexit__(None, None, None)

            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port['tracking']}")
            try:
                yield Mesh(
                    Market(order_ch, stores, order_settings),
                    location_service_pb2_grpc.LocationServiceStub(location_ch),
                    matching_service_pb2_grpc.MatchingServiceStub(matching_ch),
                    tracking_service_pb2_grpc.TrackingServiceStub(channel),
                    stores,
                    store_settings,
                    location.port,
                    start_tracking,
                    stop_tracking,
                    hubs,
                    location_hub,
                )
            finally:
                await channel.close()
                if not stopped:
                    await first.__aexit__(None, None, None)


class Phone:
    """A courier's phone: one StreamLocation, a fix whenever told, stamped now."""

    def __init__(self, mesh: Mesh, courier: Caller) -> None:
        self._queue: asyncio.Queue[location_service_pb2.StreamLocationRequest | None] = (
            asyncio.Queue()
        )
        self._sequence = 0
        self.call = mesh.location.StreamLocation(self._requests(), metadata=courier.metadata)

    async def _requests(self) -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def at(self, where: common_pb2.LatLng, device_ms: int | None = None) -> None:
        """Sends a fix at ``where`` (stamped now, or at ``device_ms``) and waits for its ack."""
        self._sequence += 1
        ms = device_ms if device_ms is not None else time.time_ns() // 1_000_000
        fix = location_pb2.LocationFix(
            position=where,
            accuracy_meters=8.0,
            speed_mps=5.0,
            device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 10**6),
            sequence=self._sequence,
        )
        await self._queue.put(location_service_pb2.StreamLocationRequest(fix=fix))
        while True:
            ack = await asyncio.wait_for(self.call.read(), BOUND_S)
            assert ack is not grpc.aio.EOF
            if ack.acked_sequence >= self._sequence:
                return

    async def close(self) -> None:
        await self._queue.put(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call.code(), BOUND_S)


class Watch:
    """One TrackOrder stream read in the background into a list."""

    def __init__(self, mesh: Mesh, who: Caller, order_id: str, resume: int = 0) -> None:
        self.updates: list[tracking_service_pb2.TrackOrderResponse] = []
        self.call = mesh.tracking.TrackOrder(
            tracking_service_pb2.TrackOrderRequest(order_id=order_id, resume_after_sequence=resume),
            metadata=who.metadata,
        )
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for update in self.call:
            self.updates.append(update)

    async def until(
        self, test: Callable[[list[tracking_service_pb2.TrackOrderResponse]], bool], what: str
    ) -> None:
        deadline = time.monotonic() + BOUND_S
        while not test(self.updates):
            if self.task.done():
                self.task.result()
                assert test(self.updates), f"the stream ended before {what}: {self.updates}"
                return
            assert time.monotonic() < deadline, f"not within {BOUND_S} s: {what}"
            await asyncio.sleep(0.02)

    async def until_status(self, status: int, driver: bool | None = None) -> None:
        def seen(updates: list[tracking_service_pb2.TrackOrderResponse]) -> bool:
            return any(
                u.status_update.status == status
                and (driver is None or bool(u.status_update.driver_id) == driver)
                for u in updates
                if u.HasField("status_update")
            )

        await self.until(seen, f"status {S.OrderStatus.Name(status)}")

    def stop(self) -> None:
        self.call.cancel()

    @property
    def last_sequence(self) -> int:
        return self.updates[-1].sequence

    def statuses(self) -> list[tuple[int, bool]]:
        return [
            (u.status_update.status, bool(u.status_update.driver_id))
            for u in self.updates
            if u.HasField("status_update")
        ]

    def notices(self) -> list[int]:
        return [u.notice.type for u in self.updates if u.HasField("notice")]


@dataclass
class Scene:
    customer: Caller
    owner: Caller
    courier: Caller
    stranger: Caller
    shop: merchant_pb2.Merchant
    order: order_pb2.Order
    pizza: merchant_pb2.MenuItem


async def _scene(mesh: Mesh, where: common_pb2.LatLng | None = HELSINKI) -> Scene:
    market = mesh.market
    owner = await market.sign_up(S.ROLE_MERCHANT)
    customer = await market.sign_up(S.ROLE_CUSTOMER)
    courier = await market.sign_up(S.ROLE_DRIVER)
    stranger = await market.sign_up(S.ROLE_CUSTOMER)
    shop, pizza = await market.shop(owner, location=where)
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza, distance_m=900), metadata=customer.metadata
        )
    ).order
    return Scene(customer, owner, courier, stranger, shop, order, pizza)


async def _advance(mesh: Mesh, scene: Scene, *steps: str) -> None:
    """Moves the order through ``steps`` (confirm, prepare, ready, assign, pickup, deliver)."""
    orders, ref = mesh.market.orders, {"order_id": scene.order.order_id}
    for step in steps:
        if step == "confirm":
            await orders.ConfirmOrder(
                order_service_pb2.ConfirmOrderRequest(
                    **ref, estimated_prep_duration=duration_pb2.Duration(seconds=600)
                ),
                metadata=scene.owner.metadata,
            )
        elif step == "prepare":
            await orders.StartPreparing(
                order_service_pb2.StartPreparingRequest(**ref), metadata=scene.owner.metadata
            )
        elif step == "ready":
            await orders.MarkOrderReady(
                order_service_pb2.MarkOrderReadyRequest(**ref), metadata=scene.owner.metadata
            )
        elif step == "assign":
            await orders.AssignCourier(
                order_service_pb2.AssignCourierRequest(**ref, driver_id=scene.courier.user_id),
                metadata=mesh.market.matching,
            )
        elif step == "pickup":
            await orders.PickUpOrder(
                order_service_pb2.PickUpOrderRequest(**ref), metadata=scene.courier.metadata
            )
        elif step == "deliver":
            await orders.CompleteDelivery(
                order_service_pb2.CompleteDeliveryRequest(
                    **ref, request_id=uuid.uuid4().hex, pin=scene.order.delivery_pin
                ),
                metadata=scene.courier.metadata,
            )
        else:
            raise AssertionError(step)


async def test_a_whole_order_is_watched_from_placement_to_delivery(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    courier, order = scene.courier, scene.order
    shop = scene.shop.location
    # The courier starts their shift near the shop, available, with their offer stream open.
    phone = Phone(mesh, courier)
    await phone.at(north(shop, -400))
    await mesh.location.SetAvailability(
        location_service_pb2.SetAvailabilityRequest(
            request_id=uuid.uuid4().hex, status=S.DRIVER_STATUS_AVAILABLE
        ),
        metadata=courier.metadata,
    )
    offers = mesh.matching.StreamOffers(
        matching_service_pb2.StreamOffersRequest(), metadata=courier.metadata
    )
    customer = Watch(mesh, scene.customer, order.order_id)
    merchant = Watch(mesh, scene.owner, order.order_id)
    try:
        await customer.until_status(S.ORDER_STATUS_PENDING)
        await _advance(mesh, scene, "confirm", "prepare", "ready")
        await customer.until_status(S.ORDER_STATUS_READY_FOR_PICKUP)
        # The courier moves before anyone assigned them: nobody is shown where they are.
        await phone.at(north(shop, -350))
        admin = await mesh.market.admin()
        await mesh.matching.DispatchOrder(
            matching_service_pb2.DispatchOrderRequest(order_id=order.order_id),
            metadata=admin.metadata,
        )
        offered = await asyncio.wait_for(offers.read(), BOUND_S)
        assert offered.offer.order_id == order.order_id
        await mesh.matching.AcceptOffer(
            matching_service_pb2.AcceptOfferRequest(
                offer_id=offered.offer.offer_id, request_id=uuid.uuid4().hex
            ),
            metadata=courier.metadata,
        )
        await customer.until_status(S.ORDER_STATUS_READY_FOR_PICKUP, driver=True)
        # A few metres at a time: the fixes come in real time, and location_svc drops jumps.
        for metres in (-345, -340, -335, -330):
            await phone.at(north(shop, metres))
            await asyncio.sleep(0.3)
        await customer.until(
            lambda us: any(u.HasField("courier_position") for u in us), "a courier position"
        )
        await merchant.until(
            lambda us: any(u.HasField("courier_position") for u in us), "the shop sees it too"
        )
        await _advance(mesh, scene, "pickup")
        await customer.until_status(S.ORDER_STATUS_PICKED_UP)
        for metres in (-325, -320, -315):
            await phone.at(north(shop, metres))
            await asyncio.sleep(0.3)
        await _advance(mesh, scene, "deliver")
        await asyncio.wait_for(customer.task, BOUND_S)
        await asyncio.wait_for(merchant.task, BOUND_S)
    finally:
        offers.cancel()
        await phone.close()
        customer.stop()
        merchant.stop()

    # Every status once, in order; the courier joins while the order waits at the shop.
    assert customer.statuses() == [
        (S.ORDER_STATUS_PENDING, False),
        (S.ORDER_STATUS_CONFIRMED, False),
        (S.ORDER_STATUS_PREPARING, False),
        (S.ORDER_STATUS_READY_FOR_PICKUP, False),
        (S.ORDER_STATUS_READY_FOR_PICKUP, True),
        (S.ORDER_STATUS_PICKED_UP, True),
        (S.ORDER_STATUS_DELIVERED, True),
    ]
    sequences = [u.sequence for u in customer.updates]
    assert sequences == sorted(set(sequences)), "sequence numbers strictly increase"
    kinds = [u.WhichOneof("update") for u in customer.updates]
    assigned = next(i for i, u in enumerate(customer.updates) if u.status_update.driver_id)
    delivered = next(
        i
        for i, u in enumerate(customer.updates)
        if u.status_update.status == S.ORDER_STATUS_DELIVERED
    )
    positions = [i for i, kind in enumerate(kinds) if kind == "courier_position"]
    assert positions and all(assigned < i < delivered for i in positions)
    assert "eta" in kinds
    assert customer.updates[-1].status_update.status == S.ORDER_STATUS_DELIVERED
    # The shop sees the courier only until pickup.
    picked = next(
        i
        for i, u in enumerate(merchant.updates)
        if u.status_update.status == S.ORDER_STATUS_PICKED_UP
    )
    assert all(i < picked for i, u in enumerate(merchant.updates) if u.HasField("courier_position"))
    assert any(u.HasField("courier_position") for u in merchant.updates)
    # Nothing is left to estimate.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.tracking.GetEta(
            tracking_service_pb2.GetEtaRequest(order_id=order.order_id),
            metadata=scene.customer.metadata,
        )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_a_final_status_heard_while_an_update_is_sent_still_reaches_the_watcher(
    mesh: Mesh,
) -> None:
    """The order is picked up and delivered back to back while the watcher's stream is still
    sending what it took before: both statuses are sent, DELIVERED last, then the stream ends.

    Driven at the servicer's generator (the tracking server's own hub, feed and watcher): a
    consumer that does not ask for the next update keeps the handler at its ``yield``, which a
    gRPC stream's flow control cannot do deterministically for a few small messages.
    """
    scene = await _scene(mesh)
    await _advance(mesh, scene, "confirm", "prepare", "ready", "assign")
    # Tracking's log has caught up with the courier's assignment: the stream starts from it.
    caught_up = Watch(mesh, scene.customer, scene.order.order_id)
    await caught_up.until_status(S.ORDER_STATUS_READY_FOR_PICKUP, driver=True)
    caught_up.stop()
    hub = mesh.hubs[-1]
    # The running server's hub and log; TrackOrder uses nothing else of the servicer.
    service = TrackingService(hub, hub.log, None, None)
    order_id = scene.order.order_id
    token = set_principal(Principal(scene.customer.user_id, Role.CUSTOMER))
    # The handler is an async generator (closed below), typed as the iterator gRPC reads.
    stream = cast(
        AsyncGenerator[tracking_service_pb2.TrackOrderResponse, None],
        service.TrackOrder(
            tracking_service_pb2.TrackOrderRequest(order_id=order_id),
            None,  # type: ignore[arg-type]  # TrackOrder reads nothing of its context
        ),
    )
    try:
        first = await anext(stream)
        feed = hub.feeds[order_id]
        # The handler is held at the yield of ``first`` (the consumer is busy sending it);
        # meanwhile the order moves on to its end and the feed queues both for the watcher.
        await _advance(mesh, scene, "pickup", "deliver")
        # Applying DELIVERED ends the feed's watchers in the same step.
        await eventually(lambda: feed.facts.status == "delivered")
        rest = [update async for update in stream]
    finally:
        await stream.aclose()
        reset_principal(token)
    updates = [first, *rest]
    statuses = [
        (u.status_update.status, bool(u.status_update.driver_id))
        for u in updates
        if u.HasField("status_update")
    ]
    assert statuses == [
        (S.ORDER_STATUS_READY_FOR_PICKUP, True),
        (S.ORDER_STATUS_PICKED_UP, True),
        (S.ORDER_STATUS_DELIVERED, True),
    ], statuses
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(set(sequences)), "sequence numbers strictly increase"
    # Nothing about the trip follows its end: an estimate queued for PICKED_UP is not sent after
    # DELIVERED.
    assert updates[-1].HasField("status_update"), updates[-1]


async def test_strangers_and_bad_requests_are_refused(mesh: Mesh) -> None:
    scene = await _scene(mesh)

    async def refused(who: Caller, order_id: str, resume: int = 0) -> grpc.aio.AioRpcError:
        call = mesh.tracking.TrackOrder(
            tracking_service_pb2.TrackOrderRequest(order_id=order_id, resume_after_sequence=resume),
            metadata=who.metadata,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        return caught.value

    err = await refused(scene.stranger, scene.order.order_id)
    assert err.code() is grpc.StatusCode.NOT_FOUND
    # A courier not on the order is a stranger too.
    err = await refused(scene.courier, scene.order.order_id)
    assert err.code() is grpc.StatusCode.NOT_FOUND
    err = await refused(scene.customer, str(uuid.uuid4()))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    err = await refused(scene.customer, "not-an-order")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[1] == ["order_id"]
    err = await refused(scene.customer, scene.order.order_id, resume=(1 << 62))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[1] == ["resume_after_sequence"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.tracking.GetEta(
            tracking_service_pb2.GetEtaRequest(order_id=scene.order.order_id),
            metadata=scene.stranger.metadata,
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    eta = await mesh.tracking.GetEta(
        tracking_service_pb2.GetEtaRequest(order_id=scene.order.order_id),
        metadata=scene.customer.metadata,
    )
    assert eta.eta.low_delivery_time.ToSeconds() <= eta.eta.estimated_delivery_time.ToSeconds()
    assert eta.eta.estimated_delivery_time.ToSeconds() <= eta.eta.high_delivery_time.ToSeconds()
    assert eta.eta.estimated_delivery_time.ToSeconds() > time.time()


async def test_a_watcher_that_resumes_gets_exactly_the_statuses_it_missed(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    first = Watch(mesh, scene.customer, scene.order.order_id)
    await _advance(mesh, scene, "confirm")
    await first.until_status(S.ORDER_STATUS_CONFIRMED)
    first.stop()
    resume = first.last_sequence
    await _advance(mesh, scene, "prepare", "ready")
    again = Watch(mesh, scene.customer, scene.order.order_id, resume=resume)
    await again.until_status(S.ORDER_STATUS_READY_FOR_PICKUP)
    await _advance(mesh, scene, "assign")
    await again.until_status(S.ORDER_STATUS_READY_FOR_PICKUP, driver=True)
    again.stop()
    assert again.statuses() == [
        (S.ORDER_STATUS_PREPARING, False),
        (S.ORDER_STATUS_READY_FOR_PICKUP, False),
        (S.ORDER_STATUS_READY_FOR_PICKUP, True),
    ]
    assert all(u.sequence > resume for u in again.updates)
    assert tracking_pb2.TRACKING_NOTICE_TYPE_RESYNC not in again.notices()


async def test_resuming_after_tracking_restarts_gets_what_was_missed(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    first = Watch(mesh, scene.customer, scene.order.order_id)
    await _advance(mesh, scene, "confirm")
    await first.until_status(S.ORDER_STATUS_CONFIRMED)
    resume = first.last_sequence
    first.stop()
    # tracking_svc goes away; the order moves on meanwhile; a new tracking_svc starts.
    hub = mesh.hubs[-1]
    await mesh.stop_tracking()
    await _advance(mesh, scene, "prepare", "ready", "assign")
    async with mesh.start_tracking():
        assert mesh.hubs[-1] is not hub
        again = Watch(mesh, scene.customer, scene.order.order_id, resume=resume)
        await again.until_status(S.ORDER_STATUS_READY_FOR_PICKUP, driver=True)
        again.stop()
    assert again.statuses() == [
        (S.ORDER_STATUS_PREPARING, False),
        (S.ORDER_STATUS_READY_FOR_PICKUP, False),
        (S.ORDER_STATUS_READY_FOR_PICKUP, True),
    ]
    assert all(u.sequence > resume for u in again.updates)


async def test_a_silent_courier_is_shown_stale_then_live_again(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    phone = Phone(mesh, scene.courier)
    try:
        await phone.at(north(scene.shop.location, -300))
        await _advance(mesh, scene, "confirm", "assign")
        watch = Watch(mesh, scene.customer, scene.order.order_id)
        await watch.until(
            lambda us: any(u.HasField("courier_position") for u in us), "a courier position"
        )
        stale = tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_STALE
        resumed = tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_RESUMED
        await watch.until(lambda us: stale in watch.notices(), "the stale notice")
        # Fixes again; on a loaded machine one may already be older than STALE_S when it is
        # heard, so the courier rides on until a fresh one brings the notice.
        metres = -295.0
        deadline = time.monotonic() + BOUND_S
        while resumed not in watch.notices():
            assert time.monotonic() < deadline, f"not within {BOUND_S} s: the resumed notice"
            await phone.at(north(scene.shop.location, metres))
            metres += 1.0
            await asyncio.sleep(0.3)
        await watch.until(
            lambda us: us[-1].HasField("courier_position") and not us[-1].courier_position.stale,
            "a live position after the notice",
        )
        watch.stop()
        assert watch.notices().index(stale) < watch.notices().index(resumed)
    finally:
        await phone.close()


async def test_many_watchers_share_one_upstream_subscription(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    phone = Phone(mesh, scene.courier)
    admin = await mesh.market.admin()
    watches: list[Watch] = []
    try:
        await phone.at(north(scene.shop.location, -300))
        await _advance(mesh, scene, "confirm", "assign")
        for i in range(30):
            who = scene.customer if i % 3 == 0 else scene.owner if i % 3 == 1 else admin
            watches.append(Watch(mesh, who, scene.order.order_id))
        target = north(scene.shop.location, -295)
        await phone.at(target)
        for watch in watches:
            await watch.until(
                lambda us: any(
                    u.HasField("courier_position")
                    and abs(u.courier_position.position.latitude - target.latitude) < 1e-6
                    for u in us
                ),
                "the courier's newest position",
            )
        hub = mesh.hubs[-1]
        assert list(hub.feeds) == [scene.order.order_id]
        assert list(hub.couriers) == [scene.courier.user_id]
        # One stream to location_svc carries every courier this process follows.
        assert hub.follower.streams_opened == 1
        assert scene.courier.user_id in hub.follower.followed
        # location_svc serves that one stream for the courier, and no other.
        assert mesh.location_hub.watchers(scene.courier.user_id) == 1
        assert len(hub.feeds[scene.order.order_id].watchers) == 30
    finally:
        for watch in watches:
            watch.stop()
        await phone.close()


async def test_watchers_hear_when_no_courier_takes_the_order(mesh: Mesh) -> None:
    # Somewhere random, where no courier of any test is.
    scene = await _scene(mesh, where=None)
    watch = Watch(mesh, scene.customer, scene.order.order_id)
    # The stream's snapshot must be the placed order, so that resuming after it replays the
    # confirmation: confirmed before the stream reached tracking, the snapshot itself would say
    # CONFIRMED and the resume below would rightly replay no status (seen in CI on a busy machine).
    await watch.until_status(S.ORDER_STATUS_PENDING)
    await _advance(mesh, scene, "confirm")
    await watch.until_status(S.ORDER_STATUS_CONFIRMED)
    admin = await mesh.market.admin()
    await mesh.matching.DispatchOrder(
        matching_service_pb2.DispatchOrderRequest(order_id=scene.order.order_id),
        metadata=admin.metadata,
    )
    none = tracking_pb2.TRACKING_NOTICE_TYPE_NO_DRIVER_AVAILABLE
    await watch.until(lambda us: none in watch.notices(), "the no-courier notice")
    resume = watch.updates[0].sequence
    watch.stop()
    # A watcher resuming from before it is told too: the notice is logged, not fleeting.
    again = Watch(mesh, scene.customer, scene.order.order_id, resume=resume)
    await again.until(lambda us: none in again.notices(), "the notice again on resume")
    again.stop()
    assert again.statuses() == [(S.ORDER_STATUS_CONFIRMED, False)]


async def test_a_watcher_too_far_behind_gets_a_resync_and_a_fresh_snapshot(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    await _advance(mesh, scene, "confirm")
    first = Watch(mesh, scene.customer, scene.order.order_id)
    await first.until_status(S.ORDER_STATUS_CONFIRMED)
    first.stop()
    # A number from before this order's log began (a log lost with Redis looks the same).
    behind = Watch(mesh, scene.customer, scene.order.order_id, resume=1)
    await behind.until_status(S.ORDER_STATUS_CONFIRMED)
    behind.stop()
    resync, snapshot = behind.updates[0], behind.updates[1]
    assert resync.notice.type == tracking_pb2.TRACKING_NOTICE_TYPE_RESYNC
    assert snapshot.status_update.status == S.ORDER_STATUS_CONFIRMED
    assert 1 < resync.sequence < snapshot.sequence


async def test_a_customer_does_not_follow_the_courier_to_another_customers_door(
    mesh: Mesh,
) -> None:
    far = await _scene(mesh)
    market = mesh.market
    # A second customer of the same shop, nearer, on the same courier's bike.
    neighbour = await market.sign_up(S.ROLE_CUSTOMER)
    near_order = (
        await market.orders.CreateOrder(
            market.order_request(far.shop, far.pizza, distance_m=300),
            metadata=neighbour.metadata,
        )
    ).order
    near = replace(far, customer=neighbour, order=near_order)
    phone = Phone(mesh, far.courier)
    try:
        await phone.at(north(far.shop.location, -20))
        for scene in (far, near):
            await _advance(mesh, scene, "confirm", "prepare", "ready", "assign", "pickup")
        watch = Watch(mesh, far.customer, far.order.order_id)
        drop = tracking_pb2.TRACKING_NOTICE_TYPE_COURIER_HAS_ANOTHER_DROP
        await watch.until(lambda us: drop in watch.notices(), "the another-drop notice")
        await phone.at(north(far.shop.location, -15))
        await phone.at(north(far.shop.location, -10))
        hidden_until = len(watch.updates)
        # The courier drops the nearer order; the far customer sees them again.
        await _advance(mesh, near, "deliver")
        await phone.at(north(far.shop.location, -5))
        await watch.until(
            lambda us: any(u.HasField("courier_position") for u in us[hidden_until:]),
            "the courier's position once the other drop is done",
        )
        watch.stop()
        noticed = next(i for i, u in enumerate(watch.updates) if u.notice.type == drop)
        assert not any(u.HasField("courier_position") for u in watch.updates[noticed:hidden_until])
    finally:
        await phone.close()


async def test_the_estimate_falls_as_the_courier_rides_to_the_door_on_helsinkis_streets(
    mesh: Mesh,
) -> None:
    scene = await _scene(mesh)
    shop, door = scene.shop.location, scene.order.delivery_location
    phone = Phone(mesh, scene.courier)
    roads = RoadTravelTimes()
    watch = Watch(mesh, scene.customer, scene.order.order_id)
    try:
        await phone.at(shop)
        await _advance(mesh, scene, "confirm", "prepare", "ready", "assign", "pickup")
        await watch.until_status(S.ORDER_STATUS_PICKED_UP)
        estimates = []
        # 150 m every 2.5 s: brisk, but believable to location_svc's speed check.
        for metres in (0, 150, 300, 450, 600, 750):
            here = north(shop, metres)
            if metres:
                await asyncio.sleep(2.5)
                await phone.at(here)
            await watch.until(
                lambda us, lat=here.latitude: any(
                    abs(u.courier_position.position.latitude - lat) < 1e-7
                    for u in us
                    if u.HasField("courier_position")
                ),
                f"the courier {metres} m north of the shop",
            )
            eta = (
                await mesh.tracking.GetEta(
                    tracking_service_pb2.GetEtaRequest(order_id=scene.order.order_id),
                    metadata=scene.customer.metadata,
                )
            ).eta
            made = eta.compute_time.ToNanoseconds() / 1e9
            left = eta.estimated_delivery_time.ToNanoseconds() / 1e9 - made
            # The road network's ride from where the courier is, plus the handoff.
            ride = roads.leg(
                Point(here.latitude, here.longitude),
                Point(door.latitude, door.longitude),
                Vehicle.BICYCLE,
                time.gmtime(made).tm_hour,
            )
            assert abs(left - (ride.seconds + EtaRules().dropoff_service_s)) < 1.0
            estimates.append(left)
        assert estimates == sorted(estimates, reverse=True), estimates
        assert estimates[0] - estimates[-1] > 60
    finally:
        watch.stop()
        await phone.close()


async def test_plan_route_orders_stops_and_refuses_bad_ones(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    shop = scene.shop.location

    def stop(stop_id: str, order: str, kind: int, metres: float, **extra: object) -> object:
        return tracking_pb2.RouteStop(
            stop_id=stop_id,
            order_id=order,
            kind=kind,  # type: ignore[arg-type]
            location=north(shop, metres),
            **extra,  # type: ignore[arg-type]
        )

    pickup, dropoff = tracking_pb2.STOP_KIND_PICKUP, tracking_pb2.STOP_KIND_DROPOFF
    start_s = int(time.time())
    request = tracking_service_pb2.PlanRouteRequest(
        start=north(shop, -500),
        start_time=timestamp_pb2.Timestamp(seconds=start_s),
        vehicle_type=S.VEHICLE_TYPE_BICYCLE,
        stops=[
            stop("d1", "o1", dropoff, 900),
            stop("p1", "o1", pickup, 0, ready_time=timestamp_pb2.Timestamp(seconds=start_s + 400)),
            stop("d2", "o2", dropoff, 400),  # already on board
            stop("p3", "o3", pickup, 200),
            stop("d3", "o3", dropoff, -300, service_duration=duration_pb2.Duration(seconds=60)),
        ],
    )
    planned = await mesh.tracking.PlanRoute(request, metadata=scene.courier.metadata)
    order = [p.stop.stop_id for p in planned.stops]
    assert sorted(order) == ["d1", "d2", "d3", "p1", "p3"]
    assert order.index("p1") < order.index("d1") and order.index("p3") < order.index("d3")
    times = [
        (p.arrival_time.ToNanoseconds(), p.departure_time.ToNanoseconds()) for p in planned.stops
    ]
    assert all(a <= d for a, d in times) and times == sorted(times)
    # The fastest of every order that keeps pickups first, on the same streets.
    by_id = {s.stop_id: s for s in request.stops}
    roads = RoadTravelTimes()

    def as_stop(s: tracking_pb2.RouteStop) -> Stop:
        return Stop(
            s.stop_id,
            s.order_id,
            StopKind.PICKUP if s.kind == pickup else StopKind.DROPOFF,
            Point(s.location.latitude, s.location.longitude),
            s.ready_time.seconds if s.HasField("ready_time") else None,
            s.service_duration.seconds,
        )

    best = math.inf
    for visit in itertools.permutations(by_id):
        if visit.index("p1") > visit.index("d1") or visit.index("p3") > visit.index("d3"):
            continue
        route = evaluate_route(
            Point(request.start.latitude, request.start.longitude),
            start_s,
            Vehicle.BICYCLE,
            [as_stop(by_id[i]) for i in visit],
            roads,
        )
        best = min(best, route.finish_time)
    finish = planned.stops[-1].departure_time.ToNanoseconds() / 1e9
    assert finish == pytest.approx(best, abs=1e-3)
    assert planned.total_distance_meters == pytest.approx(
        sum(p.distance_from_previous_meters for p in planned.stops)
    )

    async def refused(request: tracking_service_pb2.PlanRouteRequest) -> list[str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.tracking.PlanRoute(request, metadata=scene.courier.metadata)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        return details(caught.value)[1]

    # Out of range, not NaN: the mesh refuses NaN before the planner, which names every field.
    off_map = common_pb2.LatLng(latitude=91.0, longitude=0.0)
    assert await refused(tracking_service_pb2.PlanRouteRequest(start=north(shop, 0), stops=[])) == [
        "stops"
    ]
    assert await refused(
        tracking_service_pb2.PlanRouteRequest(
            start=north(shop, 0),
            stops=[stop(f"s{i}", f"o{i}", dropoff, i) for i in range(21)],
        )
    ) == ["stops"]
    assert await refused(
        tracking_service_pb2.PlanRouteRequest(
            start=off_map,
            stops=[
                stop("p", "o", pickup, 0),
                stop("p", "o", dropoff, 10),
                stop("q", "o", tracking_pb2.STOP_KIND_UNSPECIFIED, 10),
                tracking_pb2.RouteStop(stop_id="x", order_id="x", kind=dropoff, location=off_map),
                stop("lonely", "o3", pickup, 5),
            ],
        )
    ) == [
        "start.latitude",
        "stops[0].stop_id",
        "stops[1].stop_id",
        "stops[2].kind",
        "stops[3].location.latitude",
        "stops[4]",
    ]
    # Customers do not plan couriers' routes.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.tracking.PlanRoute(
            tracking_service_pb2.PlanRouteRequest(start=shop, stops=[stop("d", "o", dropoff, 10)]),
            metadata=scene.customer.metadata,
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_notifications_stream_live_through_tracking(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    listed = await mesh.market.orders.ListNotifications(
        order_service_pb2.ListNotificationsRequest(), metadata=scene.customer.metadata
    )
    # Resuming after the newest one the customer has: no race with the stream's start.
    newest = max(int(n.notification_id) for n in listed.notifications)
    feed = mesh.tracking.StreamNotifications(
        tracking_service_pb2.StreamNotificationsRequest(resume_after_sequence=newest),
        metadata=scene.customer.metadata,
    )
    try:
        await _advance(mesh, scene, "confirm", "prepare")
        had = {n.notification_id for n in listed.notifications}
        got = []
        while len(got) < 2:
            message = await asyncio.wait_for(feed.read(), BOUND_S)
            # A resume re-reads a few seconds before its point (late commits): a client drops
            # what it has by id.
            if message.notification.notification_id not in had:
                got.append(message)
    finally:
        feed.cancel()
    assert [n.notification.type for n in got] == [
        order_pb2.NOTIFICATION_TYPE_ORDER_CONFIRMED,
        order_pb2.NOTIFICATION_TYPE_ORDER_PREPARING,
    ]
    assert got[0].sequence < got[1].sequence
    assert {n.notification.order_id for n in got} == {scene.order.order_id}


async def test_arrival_notices_come_from_location_svcs_geofences(mesh: Mesh) -> None:
    scene = await _scene(mesh)
    shop, door = scene.shop.location, scene.order.delivery_location
    phone = Phone(mesh, scene.courier)
    watch = Watch(mesh, scene.customer, scene.order.order_id)
    # The phone's clock runs from ten minutes ago, a fix every 5 s of it, so a dwell of 20 s
    # passes in a few real fixes.
    clock_ms = time.time_ns() // 1_000_000 - 10 * 60_000

    async def stay(where: common_pb2.LatLng, notice: int, what: str) -> None:
        nonlocal clock_ms
        deadline = time.monotonic() + BOUND_S
        # location_svc's fence for the courier appears once it hears the order's event: keep
        # standing there until the notice comes.
        while notice not in watch.notices():
            assert time.monotonic() < deadline, f"not within {BOUND_S} s: {what}"
            clock_ms += 5_000
            await phone.at(where, device_ms=clock_ms)
            await asyncio.sleep(0.1)

    try:
        await phone.at(north(shop, -100), device_ms=clock_ms)
        await _advance(mesh, scene, "confirm", "prepare", "assign")
        await stay(shop, tracking_pb2.TRACKING_NOTICE_TYPE_ARRIVED_AT_MERCHANT, "at the shop")
        await _advance(mesh, scene, "ready", "pickup")
        await watch.until_status(S.ORDER_STATUS_PICKED_UP)
        # 100 m every 5 s of the phone's clock: a believable ride to the door.
        for metres in range(100, 900, 100):
            clock_ms += 5_000
            await phone.at(north(shop, metres), device_ms=clock_ms)
        await stay(door, tracking_pb2.TRACKING_NOTICE_TYPE_ARRIVED_AT_CUSTOMER, "at the door")
        watch.stop()
    finally:
        await phone.close()
    notices = [
        n
        for n in watch.notices()
        if n
        in (
            tracking_pb2.TRACKING_NOTICE_TYPE_ARRIVED_AT_MERCHANT,
            tracking_pb2.TRACKING_NOTICE_TYPE_DRIVER_APPROACHING,
            tracking_pb2.TRACKING_NOTICE_TYPE_ARRIVED_AT_CUSTOMER,
        )
    ]
    # Riding from the shop to the door crosses the approach band: approaching, then at the door.
    assert notices == [
        tracking_pb2.TRACKING_NOTICE_TYPE_ARRIVED_AT_MERCHANT,
        tracking_pb2.TRACKING_NOTICE_TYPE_DRIVER_APPROACHING,
        tracking_pb2.TRACKING_NOTICE_TYPE_ARRIVED_AT_CUSTOMER,
    ]
