"""A revoked or expired session ends every stream it opened, on every service, with
UNAUTHENTICATED: order, location, matching and tracking as separate gRPC servers on real sockets,
real PostgreSQL and Redis; the courier and the customer log out through order_svc while their
streams are open on the others."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import account_service_pb2, order_service_pb2
from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from location_svc.server import build_server as build_location
from matching_svc.dispatcher import DispatchRules
from matching_svc.server import build_server as build_matching
from mesh.auth import Role, SessionStore
from mesh.events import stream_for
from mesh.geo import EARTH_RADIUS_M
from mesh.interceptors import MeshInterceptor
from mesh.server import MeshServer, ServiceBinding, build_grpc_server
from mesh.session_watch import SessionWatch
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores
from mesh.testing import bearer, service_metadata, serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Caller, Market, details
from tests.integration.rows import shop_order
from tests.polling import eventually
from tracking_svc.domain.travel import CrowFlies
from tracking_svc.server import build_server as build_tracking

#: A bound for one read, far above anything expected: never a timing threshold of the test.
READ_S = 60.0
S = common_pb2
Metadata = tuple[tuple[str, str], ...]


@dataclass
class World:
    market: Market
    location: location_service_pb2_grpc.LocationServiceStub
    matching: matching_service_pb2_grpc.MatchingServiceStub
    tracking: tracking_service_pb2_grpc.TrackingServiceStub
    stores: Stores
    order_settings: Settings
    #: Where this module's shop stands (far from other tests' couriers).
    shop: tuple[float, float]

    @property
    def as_order_svc(self) -> Metadata:
        return service_metadata(self.order_settings, "order")

    async def logout(self, caller: Caller) -> None:
        await self.market.accounts.Logout(
            account_service_pb2.LogoutRequest(), metadata=caller.metadata
        )

    def near_shop(self, metres: float) -> common_pb2.LatLng:
        return S.LatLng(
            latitude=self.shop[0] + math.degrees(metres / EARTH_RADIUS_M), longitude=self.shop[1]
        )

    async def report(self, caller: Caller, where: common_pb2.LatLng) -> None:
        await self.location.ReportLocations(
            location_service_pb2.ReportLocationsRequest(fixes=[_fix(where)]),
            metadata=caller.metadata,
        )

    async def position(self, driver_id: str) -> common_pb2.LatLng:
        found = await self.location.GetDriverLocation(
            location_service_pb2.GetDriverLocationRequest(driver_id=driver_id),
            metadata=self.as_order_svc,
        )
        return found.location.position


@pytest.fixture(scope="module")
async def world(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[World]:
    order_settings = settings_for_test("order", store_settings)
    suffix = uuid.uuid4().hex[:8]
    groups = {"matching": f"matching-{suffix}", "tracking": f"tracking-{suffix}"}
    async with serving(build_location, settings_for_test("location", store_settings), stores) as (
        location_server,
        location_channel,
    ):
        location_addr = f"127.0.0.1:{location_server.port}"

        async def matching(settings: Settings, stores: Stores) -> MeshServer:
            return await build_matching(
                settings,
                stores,
                location_addr=location_addr,
                rules=DispatchRules(offer_ttl_s=60.0, search_again_s=0.2),
                tick_s=0.05,
                group_start_id="$",
                consumer_group=groups["matching"],
            )

        async def tracking(settings: Settings, stores: Stores) -> MeshServer:
            return await build_tracking(
                settings,
                stores,
                location_addr=location_addr,
                travel=CrowFlies(),
                group_start_id="$",
                consumer_group=groups["tracking"],
            )

        try:
            async with (
                serving(build_order, order_settings, stores) as (_, order_channel),
                serving(matching, settings_for_test("matching", store_settings), stores) as (
                    _,
                    matching_channel,
                ),
                serving(tracking, settings_for_test("tracking", store_settings), stores) as (
                    _,
                    tracking_channel,
                ),
            ):
                yield World(
                    Market(order_channel, stores, order_settings),
                    location_service_pb2_grpc.LocationServiceStub(location_channel),
                    matching_service_pb2_grpc.MatchingServiceStub(matching_channel),
                    tracking_service_pb2_grpc.TrackingServiceStub(tracking_channel),
                    stores,
                    order_settings,
                    (random.uniform(-50, 50), random.uniform(-170, 170)),
                )
        finally:
            assert stores.redis is not None
            for aggregate, group in (("order", groups["matching"]), ("order", groups["tracking"])):
                with contextlib.suppress(Exception):
                    await stores.redis.xgroup_destroy(stream_for(aggregate), group)
            with contextlib.suppress(Exception):
                await stores.redis.xgroup_destroy(stream_for("location"), groups["tracking"])


def _fix(where: common_pb2.LatLng, sequence: int = 0) -> location_pb2.LocationFix:
    ms = time.time_ns() // 1_000_000
    return location_pb2.LocationFix(
        position=where,
        accuracy_meters=8.0,
        speed_mps=1.0,
        device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 10**6),
        sequence=sequence,
    )


async def _ended(call: grpc.aio.Call) -> tuple[grpc.StatusCode, str]:
    """Reads ``call`` to its end; its status code and ErrorInfo reason."""
    try:
        while await asyncio.wait_for(call.read(), READ_S) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            pass
    except grpc.aio.AioRpcError as err:
        return err.code(), details(err)[0]
    return grpc.StatusCode.OK, ""


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), details(caught.value)[0]


class Phone:
    """A courier's StreamLocation: a fix whenever told."""

    def __init__(self, world: World, courier: Caller) -> None:
        self._queue: asyncio.Queue[location_service_pb2.StreamLocationRequest | None] = (
            asyncio.Queue()
        )
        self.sequence = 0
        self.call = world.location.StreamLocation(self._requests(), metadata=courier.metadata)

    async def _requests(self) -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def send(self, where: common_pb2.LatLng) -> None:
        self.sequence += 1
        await self._queue.put(location_service_pb2.StreamLocationRequest(fix=_fix(where)))

    async def acked(self) -> location_service_pb2.StreamLocationResponse:
        """The first ack that covers every fix sent so far."""
        while True:
            ack = await asyncio.wait_for(self.call.read(), READ_S)
            assert ack is not grpc.aio.EOF
            if ack.accepted_count + ack.dropped_count >= self.sequence:
                return ack


async def test_logout_ends_the_couriers_gps_stream_and_a_fix_sent_after_it_is_not_accepted(
    world: World,
) -> None:
    courier = await world.market.sign_up(S.ROLE_DRIVER)
    before, after = world.near_shop(100), world.near_shop(900)
    phone = Phone(world, courier)
    await phone.send(before)
    assert (await phone.acked()).accepted_count == 1

    await world.logout(courier)
    # The app keeps sending, as the app of the report did (4 of 4 fixes accepted).
    await phone.send(after)
    acks = []
    try:
        while (ack := await asyncio.wait_for(phone.call.read(), READ_S)) is not grpc.aio.EOF:
            acks.append(ack)
    except grpc.aio.AioRpcError as err:
        assert (err.code(), details(err)[0]) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "SESSION_REVOKED",
        )
    else:
        raise AssertionError("the stream ended OK after its session was revoked")
    assert all(ack.accepted_count == 1 for ack in acks)

    # A fix another courier reports now is stored after anything the stream had handed to
    # ingest: once it is, the logged-out courier still stands where their last accepted fix put
    # them.
    other = await world.market.sign_up(S.ROLE_DRIVER)
    await world.report(other, world.near_shop(50))
    stands = await world.position(courier.user_id)
    assert (stands.latitude, stands.longitude) == (
        pytest.approx(before.latitude, abs=1e-6),
        pytest.approx(before.longitude, abs=1e-6),
    )


async def test_logout_ends_the_couriers_offer_stream_with_an_offer_on_it(world: World) -> None:
    courier = await world.market.sign_up(S.ROLE_DRIVER)
    await world.location.SetAvailability(
        location_service_pb2.SetAvailabilityRequest(status=S.DRIVER_STATUS_AVAILABLE),
        metadata=courier.metadata,
    )
    await world.report(courier, world.near_shop(300))
    offers = world.matching.StreamOffers(
        matching_service_pb2.StreamOffersRequest(), metadata=courier.metadata
    )
    assert world.stores.pool is not None
    order = (await shop_order(world.stores.pool, "confirmed", shop=world.shop)).order
    await world.matching.DispatchOrder(
        matching_service_pb2.DispatchOrderRequest(order_id=order), metadata=world.as_order_svc
    )
    offered = await asyncio.wait_for(offers.read(), READ_S)
    assert offered.offer.order_id == order

    await world.logout(courier)
    assert await _ended(offers) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")


async def test_logout_ends_watch_and_follow_streams(world: World) -> None:
    courier = await world.market.sign_up(S.ROLE_DRIVER)
    await world.report(courier, world.near_shop(200))
    admin = await world.market.admin()
    watch = world.location.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(driver_id=courier.user_id),
        metadata=courier.metadata,
    )
    assert (await asyncio.wait_for(watch.read(), READ_S)).location.driver_id == courier.user_id
    nobody = str(uuid.uuid4())
    follow = world.location.FollowDrivers(metadata=admin.metadata)
    await follow.write(location_service_pb2.FollowDriversRequest(follow_driver_ids=[nobody]))
    assert list((await asyncio.wait_for(follow.read(), READ_S)).unknown_driver_ids) == [nobody]

    await world.logout(courier)
    assert await _ended(watch) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
    await world.logout(admin)
    assert await _ended(follow) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")


async def test_logout_ends_the_customers_tracking_and_notification_streams(world: World) -> None:
    market = world.market
    owner = await market.sign_up(S.ROLE_MERCHANT)
    customer = await market.sign_up(S.ROLE_CUSTOMER)
    shop, pizza = await market.shop(owner)
    order_id = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza), metadata=customer.metadata
        )
    ).order.order_id
    track = world.tracking.TrackOrder(
        tracking_service_pb2.TrackOrderRequest(order_id=order_id), metadata=customer.metadata
    )
    assert await asyncio.wait_for(track.read(), READ_S) is not grpc.aio.EOF
    notes = world.tracking.StreamNotifications(
        tracking_service_pb2.StreamNotificationsRequest(), metadata=customer.metadata
    )
    # The owner confirming tells the customer: the stream is open once that arrives.
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(
            order_id=order_id, estimated_prep_duration=duration_pb2.Duration(seconds=600)
        ),
        metadata=owner.metadata,
    )
    assert await asyncio.wait_for(notes.read(), READ_S) is not grpc.aio.EOF

    await world.logout(customer)
    assert await _ended(track) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
    assert await _ended(notes) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")


async def test_a_token_logged_out_on_order_svc_is_refused_by_the_other_services(
    world: World,
) -> None:
    courier = await world.market.sign_up(S.ROLE_DRIVER)
    customer = await world.market.sign_up(S.ROLE_CUSTOMER)

    def calls() -> list[object]:
        return [
            world.location.ReportLocations(
                location_service_pb2.ReportLocationsRequest(fixes=[_fix(world.near_shop(10))]),
                metadata=courier.metadata,
            ),
            world.matching.DeclineOffer(
                matching_service_pb2.DeclineOfferRequest(
                    offer_id=str(uuid.uuid4()), request_id=uuid.uuid4().hex
                ),
                metadata=courier.metadata,
            ),
            world.tracking.GetEta(
                tracking_service_pb2.GetEtaRequest(order_id=str(uuid.uuid4())),
                metadata=customer.metadata,
            ),
        ]

    # Each service knows both sessions: served (or refused for what was asked, not for who).
    location, matching, tracking = calls()
    await location  # type: ignore[misc]
    assert (await _refused(matching))[0] is grpc.StatusCode.NOT_FOUND
    assert (await _refused(tracking))[0] is grpc.StatusCode.NOT_FOUND

    await world.logout(courier)
    await world.logout(customer)
    for call in calls():
        assert await _refused(call) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")


async def test_an_expiring_session_ends_the_stream_it_opened(world: World) -> None:
    """A session made with a short lifetime (doubled until the stream opens before it ends)."""
    assert world.stores.redis is not None
    courier = await world.market.sign_up(S.ROLE_DRIVER)
    await world.report(courier, world.near_shop(600))
    for ttl_s in (2, 4, 8, 16, 32):
        sessions = SessionStore(
            world.stores.redis,
            ttl_s=ttl_s,
            service_secret=world.order_settings.auth.service_secret,
        )
        metadata = bearer(await sessions.create(courier.user_id, Role.DRIVER))
        watch = world.location.WatchDriverLocation(
            location_service_pb2.WatchDriverLocationRequest(driver_id=courier.user_id),
            metadata=metadata,
        )
        try:
            await asyncio.wait_for(watch.read(), READ_S)
        except grpc.aio.AioRpcError as err:
            # Expired before the stream was served: a busy machine; longer next time.
            assert details(err)[0] == "SESSION_INVALID"
            continue
        assert await _ended(watch) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_EXPIRED")
        return
    raise AssertionError("no stream opened within its session's lifetime")


# --- the mechanism, on a server of our own ---------------------------------------------------

Response = location_service_pb2.WatchDriverLocationResponse


class Probe(location_service_pb2_grpc.LocationServiceServicer):
    """Streams of each kind that say when their cleanup ran."""

    def __init__(self) -> None:
        self.cleaned: list[str] = []

    async def StreamLocation(self, request_iterator, context):  # type: ignore[no-untyped-def]
        # A reader: waits in the request iterator, writes with the context.
        await context.write(location_service_pb2.StreamLocationResponse(accepted_count=0))
        try:
            async for _ in request_iterator:
                await context.write(location_service_pb2.StreamLocationResponse(accepted_count=1))
        finally:
            self.cleaned.append("reader")

    async def WatchDriverLocation(self, request, context):  # type: ignore[no-untyped-def]
        try:
            yield Response()
            await asyncio.Event().wait()
        finally:
            self.cleaned.append(f"generator {request.driver_id}")

    async def FollowDrivers(self, request_iterator, context):  # type: ignore[no-untyped-def]
        # A handler that swallows its cancellation and returns as if all were well.
        yield location_service_pb2.FollowDriversResponse()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        self.cleaned.append("swallower")


@dataclass
class Probed:
    stub: location_service_pb2_grpc.LocationServiceStub
    probe: Probe
    watch: SessionWatch
    sessions: SessionStore
    settings: Settings

    async def session(self, ttl_s: int | None = None) -> tuple[str, Metadata]:
        sessions = self.sessions
        if ttl_s is not None:
            sessions = SessionStore(
                sessions.redis, ttl_s=ttl_s, service_secret=self.settings.auth.service_secret
            )
        token = await sessions.create(str(uuid.uuid4()), Role.DRIVER)
        return token, bearer(token)


@pytest.fixture
async def probed(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Probed]:
    assert stores.redis is not None
    settings = settings_for_test("location", store_settings)
    sessions = SessionStore(stores.redis, ttl_s=600, service_secret=settings.auth.service_secret)
    probe = Probe()
    interceptor = MeshInterceptor(sessions)
    assert interceptor.watch is not None
    watch = interceptor.watch

    async def build(settings: Settings, stores: Stores) -> MeshServer:
        binding = ServiceBinding(
            location_service_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name,
            probe,
            location_service_pb2_grpc.add_LocationServiceServicer_to_server,
        )
        server = build_grpc_server(settings.server, [binding], [interceptor], interceptor.gate)
        server.add_worker(watch.run, watch.stop)
        return server

    async with serving(build, settings, stores) as (_, channel):
        yield Probed(
            location_service_pb2_grpc.LocationServiceStub(channel), probe, watch, sessions, settings
        )


async def _requests() -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
    await asyncio.Event().wait()
    yield location_service_pb2.StreamLocationRequest()


async def test_revocation_ends_every_kind_of_stream_of_that_session_only_after_cleanup(
    probed: Probed,
) -> None:
    token, mine = await probed.session()
    _, theirs = await probed.session()
    stub = probed.stub
    reader = stub.StreamLocation(_requests(), metadata=mine)
    generator = stub.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(driver_id="mine"), metadata=mine
    )
    swallower = stub.FollowDrivers(metadata=mine)
    other = stub.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(driver_id="theirs"), metadata=theirs
    )
    service = stub.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(driver_id="service"),
        metadata=service_metadata(probed.settings, "tracking"),
    )
    for call in (reader, generator, swallower, other, service):
        assert await asyncio.wait_for(call.read(), READ_S) is not grpc.aio.EOF
    # Services are not sessions: their streams are not watched.
    assert (probed.watch.streams, probed.watch.sessions) == (4, 2)

    await probed.sessions.revoke(await probed.sessions.authenticate(token))
    revoked = (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
    for call in (reader, generator, swallower):
        assert await _ended(call) == revoked
    # Each handler's cleanup ran before its call ended.
    assert sorted(probed.probe.cleaned) == ["generator mine", "reader", "swallower"]
    assert not other.done() and not service.done()
    assert (probed.watch.streams, probed.watch.sessions) == (1, 1)
    other.cancel()
    service.cancel()
    await eventually(lambda: probed.watch.streams == 0 and probed.watch.sessions == 0)
    await eventually(lambda: len(probed.probe.cleaned) == 5)


async def test_a_session_removed_without_a_message_is_found_by_the_check(probed: Probed) -> None:
    token, metadata = await probed.session()
    call = probed.stub.WatchDriverLocation(
        location_service_pb2.WatchDriverLocationRequest(driver_id="x"), metadata=metadata
    )
    assert await asyncio.wait_for(call.read(), READ_S) is not grpc.aio.EOF
    principal = await probed.sessions.authenticate(token)
    assert probed.sessions.redis is not None
    # Gone from Redis with nobody told (a lost message, a flushed store).
    await probed.sessions.redis.delete(principal.session_key)
    assert await _ended(call) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
    assert probed.watch.streams == 0


async def test_an_expiring_session_ends_each_stream_it_opened(probed: Probed) -> None:
    for ttl_s in (2, 4, 8, 16, 32):
        _, metadata = await probed.session(ttl_s)
        calls = [
            probed.stub.WatchDriverLocation(
                location_service_pb2.WatchDriverLocationRequest(driver_id="x"), metadata=metadata
            ),
            probed.stub.StreamLocation(_requests(), metadata=metadata),
        ]
        try:
            for call in calls:
                await asyncio.wait_for(call.read(), READ_S)
        except grpc.aio.AioRpcError as err:
            # Expired before a stream was served: a busy machine; longer next time.
            assert details(err)[0] == "SESSION_INVALID"
            for call in calls:
                call.cancel()
            continue
        for call in calls:
            assert await _ended(call) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_EXPIRED")
        assert probed.watch.streams == 0
        return
    raise AssertionError("no stream opened within its session's lifetime")
