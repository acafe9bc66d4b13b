"""Builds and runs matching_svc."""

from __future__ import annotations

import grpc

from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from matching_svc.dispatcher import Dispatcher, DispatchRules
from matching_svc.locator import CourierStatus, LocationLocator
from matching_svc.service import (
    DispatchCallCollector,
    DispatchLoop,
    MatchingService,
    OfferHub,
    OfferPush,
)
from matching_svc.settings import MatchingSettings
from matching_svc.store.jobs import JobStore
from matching_svc.store.offers import OfferStore
from matching_svc.triggers import MissedTriggers, OrderTriggers
from mesh.auth import service_token
from mesh.breaker import BreakerSettings, CircuitBreaker
from mesh.events import EventConsumer, stream_for
from mesh.metrics import BreakerCollector
from mesh.server import (
    MeshServer,
    ServiceBinding,
    build_mesh_server,
    consumer_name,
    run_service,
)
from mesh.settings import Settings
from mesh.stores import Stores
from order_svc.store.orders import OrderStore

SERVICE_NAME = matching_service_pb2.DESCRIPTOR.services_by_name["MatchingService"].full_name


async def build_server(
    settings: Settings,
    stores: Stores,
    *,
    rules: DispatchRules | None = None,
    location_addr: str | None = None,
    tick_s: float | None = None,
    breaker: BreakerSettings | None = None,
    group_start_id: str = "0",
    consumer_group: str = "matching",
) -> MeshServer:
    """Binds matching_svc with its dispatch loop as a worker.

    ``rules``, ``tick_s`` and ``breaker`` default to what the environment says
    (:class:`MatchingSettings`).
    """
    assert stores.pool is not None and stores.redis is not None
    configured = MatchingSettings.from_env()
    rules = rules or configured.rules
    breaker = breaker or configured.breaker
    tick_s = tick_s or configured.tick_s
    # gRPC's default reconnect backoff grows to two minutes: after location_svc returns from
    # an outage, dispatch would wait that long. A second at most between attempts.
    channel = grpc.aio.insecure_channel(
        location_addr or settings.peers.location_addr,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )
    location_breaker = CircuitBreaker("location_svc", breaker)
    token = service_token(settings.auth.service_secret, "matching")
    locator = LocationLocator(channel, (("authorization", f"Bearer {token}"),), location_breaker)
    offers = OfferStore(stores.pool, OrderStore(stores.pool))
    jobs = JobStore(stores.pool)
    push = OfferPush(stores.redis)
    dispatcher = Dispatcher(
        stores.pool, offers, jobs, locator, rules, on_offer=push.offered, on_closed=push.closed
    )
    hub = OfferHub(stores.redis)
    service = MatchingService(hub, offers, jobs, dispatcher, [location_breaker])
    binding = ServiceBinding(
        SERVICE_NAME, service, matching_service_pb2_grpc.add_MatchingServiceServicer_to_server
    )
    server = build_mesh_server(settings, stores, [binding])
    server.metrics.register(BreakerCollector("matching", [location_breaker]))
    server.metrics.register(DispatchCallCollector(service))
    server.add_worker(hub.run, hub.stop)
    loop = DispatchLoop(dispatcher, tick_s)
    server.add_worker(loop.run, loop.stop)
    triggers = OrderTriggers(
        jobs,
        offers,
        max_attempts=rules.max_attempts,
        lead_s=rules.lead_s,
        on_closed=push.closed,
        couriers=CourierStatus(stores.pool, locator),
    )
    # A new consumer group starts at the stream's beginning ("0"): no order confirmed before
    # matching_svc first ran is missed. Tests that share a stream start at "$".
    consumer = EventConsumer(
        stores.redis,
        stream_for("order"),
        consumer_group,
        consumer_name(),
        triggers.handle,
        group_start_id=group_start_id,
    )
    server.add_worker(consumer.run, consumer.stop)
    missed = MissedTriggers(jobs, max_attempts=rules.max_attempts, lead_s=rules.lead_s)
    server.add_worker(missed.run, missed.stop)
    # Once the workers are done with it: the background steps, then the channel.
    server.on_stop.append(service.close)
    server.on_stop.append(channel.close)
    return server


async def main() -> None:
    """Runs matching_svc until SIGTERM."""
    await run_service(Settings.from_env("matching"), build_server)
