"""matching_svc over gRPC with order_svc and location_svc beside it: a courier's offer stream,
the answers, dispatch status, and the breaker while location_svc is away."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import pytest
from google.protobuf import duration_pb2

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_pb2, matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import order_pb2, order_service_pb2
from location_svc.server import build_server as build_location
from matching_svc.dispatcher import DispatchRules
from matching_svc.server import build_server as build_matching
from matching_svc.service import OfferPush
from matching_svc.store.offers import OfferStore
from mesh import clock
from mesh.auth import Role
from mesh.breaker import BreakerSettings
from mesh.events import stream_for
from mesh.geo import EARTH_RADIUS_M
from mesh.server import MeshServer
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores
from mesh.testing import service_metadata, serving, settings_for_test
from order_svc.server import build_server as build_order
from order_svc.store.orders import OrderStore
from tests.integration.marketplace import Caller, Market, details
from tests.integration.rows import shop_order
from tests.polling import eventually

RULES = DispatchRules(offer_ttl_s=30.0, search_again_s=0.2)
FAST_BREAKER = BreakerSettings(open_s=1.0, call_timeout_s=2.0)


@dataclass
class Mesh:
    market: Market
    stores: Stores
    settings: Settings
    matching: matching_service_pb2_grpc.MatchingServiceStub
    location_settings: Settings
    shop: tuple[float, float]
    matching_server: MeshServer

    async def metric(self, name: str) -> float:
        """One sample of matching_svc's /metrics, scraped over HTTP."""
        endpoint = self.matching_server.metrics_endpoint
        assert endpoint is not None
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        for line in text.decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in {url}")

    @property
    def as_order_svc(self) -> tuple[tuple[str, str], ...]:
        return service_metadata(self.settings, "order")

    async def courier_near_shop(
        self, location: location_service_pb2_grpc.LocationServiceStub, metres: float
    ) -> Caller:
        driver = await self.market.sign_up(common_pb2.ROLE_DRIVER)
        await location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(status=common_pb2.DRIVER_STATUS_AVAILABLE),
            metadata=driver.metadata,
            # This process's earlier calls to the address may have left it in backoff.
            wait_for_ready=True,
        )
        lat = self.shop[0] + math.degrees(metres / EARTH_RADIUS_M)
        ms = clock.now_ms()
        fix = location_pb2.LocationFix(
            position=common_pb2.LatLng(latitude=lat, longitude=self.shop[1]),
            accuracy_meters=5.0,
        )
        fix.device_time.FromMilliseconds(ms)
        await location.ReportLocations(
            location_service_pb2.ReportLocationsRequest(fixes=[fix]), metadata=driver.metadata
        )
        return driver

    async def order(self) -> str:
        assert self.stores.pool is not None
        return (await shop_order(self.stores.pool, "confirmed", shop=self.shop)).order

    async def dispatched_to(self, driver: Caller) -> tuple[str, matching_pb2.Offer]:
        """A new order, dispatched; the offer that reaches ``driver``'s stream."""
        stream = self.matching.StreamOffers(
            matching_service_pb2.StreamOffersRequest(), metadata=driver.metadata
        )
        order = await self.order()
        await self.matching.DispatchOrder(
            matching_service_pb2.DispatchOrderRequest(order_id=order), metadata=self.as_order_svc
        )
        offered = await asyncio.wait_for(stream.read(), 10)
        stream.cancel()
        return order, offered.offer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def mesh(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Mesh]:
    order_settings = settings_for_test("order", store_settings)
    matching_settings = settings_for_test("matching", store_settings)
    # location_svc gets a port of its own choosing later: tests start and stop it.
    location_settings = settings_for_test(
        "location", store_settings, listen=f"127.0.0.1:{_free_port()}"
    )

    group = f"matching-{uuid.uuid4().hex[:8]}"

    # Metrics over HTTP on a port of the system's choosing.
    matching_settings = replace(
        matching_settings, server=replace(matching_settings.server, metrics_listen="127.0.0.1:0")
    )

    async def matching(settings: Settings, stores: Stores):  # type: ignore[no-untyped-def]
        return await build_matching(
            settings,
            stores,
            rules=RULES,
            location_addr=location_settings.server.listen,
            tick_s=0.05,
            breaker=FAST_BREAKER,
            # Only this test's events: the shared test Redis keeps older runs' streams.
            group_start_id="$",
            consumer_group=group,
        )

    try:
        async with (
            serving(build_order, order_settings, stores) as (_, order_channel),
            serving(matching, matching_settings, stores) as (matching_server, matching_channel),
        ):
            yield Mesh(
                Market(order_channel, stores, order_settings),
                stores,
                matching_settings,
                matching_service_pb2_grpc.MatchingServiceStub(matching_channel),
                location_settings,
                (random.uniform(-50, 50), random.uniform(-170, 170)),
                matching_server,
            )
    finally:
        assert stores.redis is not None
        await stores.redis.xgroup_destroy(stream_for("order"), group)


async def test_a_courier_gets_the_offer_on_the_stream_again_after_reconnecting_and_accepts(
    mesh: Mesh,
) -> None:
    async with serving(build_location, mesh.location_settings, mesh.stores) as (_, channel):
        location = location_service_pb2_grpc.LocationServiceStub(channel)
        driver = await mesh.courier_near_shop(location, 400)
        stream = mesh.matching.StreamOffers(
            matching_service_pb2.StreamOffersRequest(), metadata=driver.metadata
        )
        order = await mesh.order()
        reply = await mesh.matching.DispatchOrder(
            matching_service_pb2.DispatchOrderRequest(order_id=order),
            metadata=mesh.as_order_svc,
        )
        assert reply.dispatch_status.order_id == order
        first = await asyncio.wait_for(stream.read(), 10)
        assert first.offer.order_id == order and first.offer.driver_id == driver.user_id
        assert first.offer.status == matching_pb2.OFFER_STATUS_PENDING
        assert first.offer.score == 0 and not first.offer.factors  # not for couriers' eyes
        stream.cancel()
        # The app was away: on reconnecting, the pending offer comes again.
        again = mesh.matching.StreamOffers(
            matching_service_pb2.StreamOffersRequest(), metadata=driver.metadata
        )
        resent = await asyncio.wait_for(again.read(), 10)
        again.cancel()
        assert resent.offer.offer_id == first.offer.offer_id
        accepted = await mesh.matching.AcceptOffer(
            matching_service_pb2.AcceptOfferRequest(offer_id=first.offer.offer_id),
            metadata=driver.metadata,
        )
        assert accepted.offer.status == matching_pb2.OFFER_STATUS_ACCEPTED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.matching.AcceptOffer(
                matching_service_pb2.AcceptOfferRequest(offer_id=first.offer.offer_id),
                metadata=driver.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details(caught.value)[0] == "OFFER_ALREADY_ACCEPTED"
        status = await mesh.matching.GetDispatchStatus(
            matching_service_pb2.GetDispatchStatusRequest(order_id=order),
            metadata=mesh.as_order_svc,
        )
        assert status.dispatch_status.state == matching_pb2.DISPATCH_STATE_ASSIGNED
        assert status.dispatch_status.driver_id == driver.user_id
        [offer] = status.dispatch_status.offers
        assert offer.score > 0 and {f.name for f in offer.factors} == {
            "distance",
            "rating",
            "acceptance",
            "load",
        }


async def test_bad_answers_get_clear_errors(mesh: Mesh) -> None:
    driver = await mesh.market.sign_up(common_pb2.ROLE_DRIVER)
    customer = await mesh.market.sign_up(common_pb2.ROLE_CUSTOMER)
    cases = [
        (driver, "not-an-id", grpc.StatusCode.INVALID_ARGUMENT),
        (driver, "00000000-0000-4000-8000-000000000000", grpc.StatusCode.NOT_FOUND),
        (customer, "00000000-0000-4000-8000-000000000000", grpc.StatusCode.PERMISSION_DENIED),
    ]
    for caller, offer_id, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.matching.AcceptOffer(
                matching_service_pb2.AcceptOfferRequest(offer_id=offer_id),
                metadata=caller.metadata,
            )
        assert caught.value.code() == code, (offer_id, caught.value.details())


async def test_the_breaker_opens_while_location_is_away_and_orders_dispatch_once_it_is_back(
    mesh: Mesh,
) -> None:
    order = await mesh.order()
    await mesh.matching.DispatchOrder(
        matching_service_pb2.DispatchOrderRequest(order_id=order), metadata=mesh.as_order_svc
    )

    async def breaker_state() -> int:
        status = await mesh.matching.GetDispatchStatus(
            matching_service_pb2.GetDispatchStatusRequest(order_id=order),
            metadata=mesh.as_order_svc,
        )
        [breaker] = status.dispatch_status.breakers
        assert breaker.name == "location_svc"
        return int(breaker.state)

    gauge = 'delivery_breaker_state{dependency="location_svc",service="matching"}'
    # Nothing answers on location_svc's address: searches fail until the breaker opens.
    await eventually(lambda: _is(breaker_state(), matching_pb2.BREAKER_STATE_OPEN))
    assert await mesh.metric(gauge) == 1.0  # open, in the metrics too
    assert await mesh.metric("process_resident_memory_bytes") > 0  # and the process's own

    async def waiting() -> bool:
        # Other tests' jobs may fail first and open the breaker before this one's turn.
        status = await mesh.matching.GetDispatchStatus(
            matching_service_pb2.GetDispatchStatusRequest(order_id=order),
            metadata=mesh.as_order_svc,
        )
        return status.dispatch_status.state == matching_pb2.DISPATCH_STATE_WAITING_FOR_RETRY

    await eventually(waiting)
    status = await mesh.matching.GetDispatchStatus(
        matching_service_pb2.GetDispatchStatusRequest(order_id=order), metadata=mesh.as_order_svc
    )
    assert status.dispatch_status.attempts == 0  # waiting on a dependency spends no attempt
    # location_svc comes back, with a courier near the shop: the queued order gets its offer.
    async with serving(build_location, mesh.location_settings, mesh.stores) as (_, channel):
        location = location_service_pb2_grpc.LocationServiceStub(channel)
        driver = await mesh.courier_near_shop(location, 300)
        stream = mesh.matching.StreamOffers(
            matching_service_pb2.StreamOffersRequest(), metadata=driver.metadata
        )
        offered = await asyncio.wait_for(stream.read(), 20)
        stream.cancel()
        assert offered.offer.order_id == order
        assert await breaker_state() == matching_pb2.BREAKER_STATE_CLOSED
        assert await mesh.metric(gauge) == 0.0


async def _is(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_a_couriers_load_follows_their_orders(mesh: Mesh) -> None:
    """Up on accept, over to the new courier on a reassignment, down on a cancellation."""
    assert mesh.stores.pool is not None
    pool = mesh.stores.pool

    async def load(driver: Caller) -> int:
        value: int = await pool.fetchval(
            "SELECT active_order_count FROM drivers WHERE id = $1::uuid", driver.user_id
        )
        return value

    async with serving(build_location, mesh.location_settings, mesh.stores) as (_, channel):
        location = location_service_pb2_grpc.LocationServiceStub(channel)
        driver = await mesh.courier_near_shop(location, 200)
        other = await mesh.market.sign_up(common_pb2.ROLE_DRIVER)
        order, offer = await mesh.dispatched_to(driver)
        await mesh.matching.AcceptOffer(
            matching_service_pb2.AcceptOfferRequest(offer_id=offer.offer_id),
            metadata=driver.metadata,
        )
    assert (await load(driver), await load(other)) == (1, 0)
    admin = await mesh.market.admin()
    await mesh.market.orders.ReassignOrder(
        order_service_pb2.ReassignOrderRequest(
            order_id=order, reason="courier's bike broke", new_driver_id=other.user_id
        ),
        metadata=admin.metadata,
    )
    assert (await load(driver), await load(other)) == (0, 1)
    await mesh.market.orders.CancelOrder(
        order_service_pb2.CancelOrderRequest(
            order_id=order, reason=order_pb2.CANCEL_REASON_OTHER, note="test"
        ),
        metadata=admin.metadata,
    )
    assert (await load(driver), await load(other)) == (0, 0)


async def test_a_confirmed_order_is_dispatched_by_its_event_and_a_cancelled_one_withdrawn(
    mesh: Mesh,
) -> None:
    owner = await mesh.market.sign_up(common_pb2.ROLE_MERCHANT)
    customer = await mesh.market.sign_up(common_pb2.ROLE_CUSTOMER)
    shop, pizza = await mesh.market.shop(owner)
    mesh.shop = (shop.location.latitude, shop.location.longitude)

    async def placed_and_confirmed(prep_s: int) -> str:
        order = (
            await mesh.market.orders.CreateOrder(
                mesh.market.order_request(shop, pizza), metadata=customer.metadata
            )
        ).order
        await mesh.market.orders.ConfirmOrder(
            order_service_pb2.ConfirmOrderRequest(
                order_id=order.order_id,
                expected_version=1,
                estimated_prep_duration=duration_pb2.Duration(seconds=prep_s),
            ),
            metadata=owner.metadata,
        )
        return order.order_id

    async def status(order_id: str) -> matching_pb2.DispatchStatus:
        reply = await mesh.matching.GetDispatchStatus(
            matching_service_pb2.GetDispatchStatusRequest(order_id=order_id),
            metadata=mesh.as_order_svc,
        )
        return reply.dispatch_status

    async def has_job(order_id: str) -> bool:
        try:
            await status(order_id)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return False
        return True

    # Long preparation: the job waits until the courier would arrive as the food is ready.
    slow = await placed_and_confirmed(3_600)
    await eventually(lambda: has_job(slow))
    waiting = await status(slow)
    assert waiting.state == matching_pb2.DISPATCH_STATE_QUEUED
    lead = waiting.next_attempt_time.ToSeconds() - waiting.update_time.ToSeconds()
    assert 3_600 - RULES.lead_s - 60 < lead <= 3_600 - RULES.lead_s + 1
    # Short preparation: at once, to the courier near the shop, with no operator involved.
    async with serving(build_location, mesh.location_settings, mesh.stores) as (_, channel):
        location = location_service_pb2_grpc.LocationServiceStub(channel)
        driver = await mesh.courier_near_shop(location, 250)
        stream = mesh.matching.StreamOffers(
            matching_service_pb2.StreamOffersRequest(), metadata=driver.metadata
        )
        quick = await placed_and_confirmed(120)
        offered = await asyncio.wait_for(stream.read(), 20)
    assert offered.offer.order_id == quick
    await mesh.market.orders.CancelOrder(
        order_service_pb2.CancelOrderRequest(
            order_id=quick, reason=order_pb2.CANCEL_REASON_CUSTOMER_CHANGED_MIND
        ),
        metadata=customer.metadata,
    )
    # The courier's app hears that the offer it shows is gone.
    closed = await asyncio.wait_for(stream.read(), 20)
    stream.cancel()
    assert closed.WhichOneof("event") == "offer_closed"
    assert closed.offer_closed.offer_id == offered.offer.offer_id
    assert closed.offer_closed.status == matching_pb2.OFFER_STATUS_WITHDRAWN

    async def withdrawn() -> bool:
        current = await status(quick)
        return current.state == matching_pb2.DISPATCH_STATE_CANCELLED and [
            o.status for o in current.offers
        ] == [matching_pb2.OFFER_STATUS_WITHDRAWN]

    await eventually(withdrawn)


async def test_a_couriers_status_follows_their_load(mesh: Mesh) -> None:
    """Busy once assigned (out of the plain search, found when busy couriers are asked for),
    available again when the order goes to another courier (who turns busy), and that one
    available again when the order is cancelled."""
    async with serving(build_location, mesh.location_settings, mesh.stores) as (_, channel):
        location = location_service_pb2_grpc.LocationServiceStub(channel)
        driver = await mesh.courier_near_shop(location, 200)
        other = await mesh.courier_near_shop(location, 400)
        as_matching = service_metadata(mesh.location_settings, "matching")

        def has_status(who: Caller, wanted: int):  # type: ignore[no-untyped-def]
            async def check() -> bool:
                reply = await location.GetDriverLocation(
                    location_service_pb2.GetDriverLocationRequest(driver_id=who.user_id),
                    metadata=as_matching,
                )
                return reply.location.status == wanted

            return check

        async def found(include_busy: bool) -> bool:
            reply = await location.FindNearbyDrivers(
                location_service_pb2.FindNearbyDriversRequest(
                    center=common_pb2.LatLng(latitude=mesh.shop[0], longitude=mesh.shop[1]),
                    radius_meters=1_000,
                    include_busy=include_busy,
                ),
                metadata=as_matching,
            )
            return driver.user_id in {d.driver_id for d in reply.drivers}

        order, offer = await mesh.dispatched_to(driver)
        assert await has_status(driver, common_pb2.DRIVER_STATUS_AVAILABLE)()
        await mesh.matching.AcceptOffer(
            matching_service_pb2.AcceptOfferRequest(offer_id=offer.offer_id),
            metadata=driver.metadata,
        )
        await eventually(has_status(driver, common_pb2.DRIVER_STATUS_BUSY))
        assert not await found(include_busy=False) and await found(include_busy=True)

        admin = await mesh.market.admin()
        await mesh.market.orders.ReassignOrder(
            order_service_pb2.ReassignOrderRequest(
                order_id=order, reason="closer courier", new_driver_id=other.user_id
            ),
            metadata=admin.metadata,
        )
        await eventually(has_status(other, common_pb2.DRIVER_STATUS_BUSY))
        await eventually(has_status(driver, common_pb2.DRIVER_STATUS_AVAILABLE))
        assert await found(include_busy=False)

        await mesh.market.orders.CancelOrder(
            order_service_pb2.CancelOrderRequest(
                order_id=order, reason=order_pb2.CANCEL_REASON_OTHER, note="test"
            ),
            metadata=admin.metadata,
        )
        await eventually(has_status(other, common_pb2.DRIVER_STATUS_AVAILABLE))


async def test_the_customer_and_the_shop_see_where_dispatch_stands_and_nothing_more(
    mesh: Mesh,
) -> None:
    assert mesh.stores.pool is not None
    made = await shop_order(mesh.stores.pool, "confirmed", shop=mesh.shop)
    # Nobody near (location_svc is not even up): the order waits for its next search.
    await mesh.matching.DispatchOrder(
        matching_service_pb2.DispatchOrderRequest(order_id=made.order), metadata=mesh.as_order_svc
    )
    customer = await mesh.market.session_for(made.customer, Role.CUSTOMER)
    owner = await mesh.market.session_for(made.owner, Role.MERCHANT)
    for party in (customer, owner):
        reply = await mesh.matching.GetDispatchStatus(
            matching_service_pb2.GetDispatchStatusRequest(order_id=made.order),
            metadata=party.metadata,
        )
        status = reply.dispatch_status
        assert status.order_id == made.order and status.max_attempts == RULES.max_attempts
        assert status.state != matching_pb2.DISPATCH_STATE_UNSPECIFIED
        assert not status.offers and not status.breakers and not status.HasField("current_offer")
    # Another customer: as if never dispatched; a courier: not theirs to ask.
    for role, code in (
        (common_pb2.ROLE_CUSTOMER, grpc.StatusCode.NOT_FOUND),
        (common_pb2.ROLE_DRIVER, grpc.StatusCode.PERMISSION_DENIED),
    ):
        outsider = await mesh.market.sign_up(role)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.matching.GetDispatchStatus(
                matching_service_pb2.GetDispatchStatusRequest(order_id=made.order),
                metadata=outsider.metadata,
            )
        assert caught.value.code() == code


async def test_offer_events_lost_while_redis_dropped_the_subscription_still_reach_the_stream(
    mesh: Mesh,
) -> None:
    """Pub/sub keeps nothing for a subscriber that is away: after the hub subscribes again,
    each stream reads what is pending and what closed meanwhile."""
    pool, redis = mesh.stores.pool, mesh.stores.redis
    assert pool is not None and redis is not None
    offers = OfferStore(pool, OrderStore(pool))
    push = OfferPush(redis)
    driver = await mesh.market.sign_up(common_pb2.ROLE_DRIVER)
    first = await offers.create(
        (await shop_order(pool, "confirmed", shop=mesh.shop)).order,
        driver.user_id,
        attempt=1,
        ttl_s=60,
    )
    stream = mesh.matching.StreamOffers(
        matching_service_pb2.StreamOffersRequest(), metadata=driver.metadata
    )
    shown = await asyncio.wait_for(stream.read(), 10)
    assert shown.offer.offer_id == first.offer_id
    # Redis drops every subscriber; while the hub is away the first offer is withdrawn and a
    # second made, and both messages go nowhere.
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for withdrawn in await offers.withdraw_for_order(first.order_id):
        await push.closed(withdrawn)
    second = await offers.create(
        (await shop_order(pool, "confirmed", shop=mesh.shop)).order,
        driver.user_id,
        attempt=1,
        ttl_s=60,
    )
    await push.offered(second)
    got = [await asyncio.wait_for(stream.read(), 20) for _ in range(2)]
    stream.cancel()
    assert {m.WhichOneof("event") for m in got} == {"offer", "offer_closed"}
    for message in got:
        if message.HasField("offer"):
            assert message.offer.offer_id == second.offer_id
        else:
            assert message.offer_closed.offer_id == first.offer_id
            assert message.offer_closed.status == matching_pb2.OFFER_STATUS_WITHDRAWN


async def test_a_burst_of_dispatch_calls_runs_a_few_rounds_not_one_each(mesh: Mesh) -> None:
    orders = [await mesh.order() for _ in range(50)]
    asked = await mesh.metric("matching_dispatch_round_requests_total")
    rounds = await mesh.metric("matching_dispatch_call_rounds_total")
    calls = [order for order in orders for _ in range(4)]
    replies = await asyncio.gather(
        *(
            mesh.matching.DispatchOrder(
                matching_service_pb2.DispatchOrderRequest(order_id=order),
                metadata=mesh.as_order_svc,
            )
            for order in calls
        )
    )
    assert sorted(r.dispatch_status.order_id for r in replies) == sorted(calls)
    assert await mesh.metric("matching_dispatch_round_requests_total") - asked == len(calls)
    # Each call used to start a whole round of its own (200 rounds at once, unbounded); now a
    # round in flight takes every call that arrives meanwhile, with one more round after it.
    ran = await mesh.metric("matching_dispatch_call_rounds_total") - rounds
    assert 1 <= ran < len(calls) / 2
    # And every order is dispatched all the same.
    for order in orders:
        status = await mesh.matching.GetDispatchStatus(
            matching_service_pb2.GetDispatchStatusRequest(order_id=order),
            metadata=mesh.as_order_svc,
        )
        assert status.dispatch_status.order_id == order
