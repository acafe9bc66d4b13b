"""Builds and runs tracking_svc."""

from __future__ import annotations

import asyncio
import time

import grpc

from delivery.location.v1 import location_service_pb2_grpc
from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from mesh.auth import service_token
from mesh.events import EventConsumer, stream_for
from mesh.server import MeshServer, ServiceBinding, build_mesh_server, consumer_name, run_service
from mesh.settings import Settings
from mesh.stores import Stores
from tracking_svc.domain.eta import Estimate, EtaInputs, estimate
from tracking_svc.domain.roads import RoadTravelTimes
from tracking_svc.domain.travel import TravelTimes, Vehicle
from tracking_svc.live import TrackingHub
from tracking_svc.notifications import NotificationHub
from tracking_svc.planner import Planner
from tracking_svc.recorder import Recorder
from tracking_svc.service import TrackingService
from tracking_svc.settings import TrackingSettings
from tracking_svc.speeds import SpeedLearner
from tracking_svc.store.calibration import EtaCalibration
from tracking_svc.store.log import TrackingLog
from tracking_svc.store.orders import OrderReader

SERVICE_NAME = tracking_service_pb2.DESCRIPTOR.services_by_name["TrackingService"].full_name


async def build_server(
    settings: Settings,
    stores: Stores,
    *,
    tracking: TrackingSettings | None = None,
    location_addr: str | None = None,
    travel: TravelTimes | None = None,
    group_start_id: str = "0",
    consumer_group: str = "tracking",
) -> MeshServer:
    """Binds tracking_svc with its log writers, its live hub and the notification feed."""
    assert stores.pool is not None and stores.redis is not None
    tracking = tracking or TrackingSettings.from_env()
    if travel is None:
        # The road network is loaded once, here; its tables are computed on first use.
        travel = RoadTravelTimes()
        learner = SpeedLearner(stores.pool, travel, every_s=tracking.speeds_every_s)
    else:
        learner = None
    channel = grpc.aio.insecure_channel(
        location_addr or settings.peers.location_addr,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # Positions that wait in a grown HTTP/2 window are stale when read: with the
            # default window, a busy tracking process holds back location_svc's sender, whose
            # mailbox keeps only each courier's newest position, instead of a backlog.
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    token = service_token(settings.auth.service_secret, "tracking")
    log = TrackingLog(stores.redis, max_entries=tracking.log_entries)
    calibration = EtaCalibration(stores.redis)
    hub = TrackingHub(
        stores.redis,
        log,
        OrderReader(stores.pool),
        location_service_pb2_grpc.LocationServiceStub(channel),
        (("authorization", f"Bearer {token}"),),
        travel,
        tracking.live,
        band=calibration.band,
    )
    notifications = NotificationHub(stores.pool, settings.stores.database_url)
    service = TrackingService(hub, log, notifications, Planner(travel))
    binding = ServiceBinding(
        SERVICE_NAME, service, tracking_service_pb2_grpc.add_TrackingServiceServicer_to_server
    )
    server = build_mesh_server(settings, stores, [binding])
    server.add_worker(hub.run, hub.stop)
    server.add_worker(notifications.run, notifications.stop)
    server.add_worker(calibration.run, calibration.stop)
    if learner is not None:
        server.add_worker(learner.run, learner.stop)
    if isinstance(travel, RoadTravelTimes):
        network = travel.network

        async def prepare() -> None:
            # Each vehicle's all-pairs table takes about half a second: computed beside the
            # serving loop at start rather than inside the first estimate that needs it.
            for vehicle in Vehicle:
                await asyncio.to_thread(network.prepare, vehicle)

        server.add_worker(prepare, lambda: None)

    def first_estimate(inputs: EtaInputs) -> Estimate:
        hour = time.gmtime(inputs.now).tm_hour
        return estimate(inputs, travel, tracking.live.eta, calibration.band(), hour)

    recorder = Recorder(log, calibration, first_estimate)
    for aggregate, handler in (
        ("order", recorder.order_event),
        ("location", recorder.location_event),
    ):
        consumer = EventConsumer(
            stores.redis,
            stream_for(aggregate),
            consumer_group,
            consumer_name(),
            handler,
            group_start_id=group_start_id,
        )
        server.add_worker(consumer.run, consumer.stop)

    async def close() -> None:
        hub.close()
        await channel.close()

    server.on_stop.append(close)
    # For tests and metrics: the hub's feeds and courier streams.
    server.tracking_hub = hub  # type: ignore[attr-defined]
    return server


async def main() -> None:
    """Runs tracking_svc until SIGTERM."""
    await run_service(Settings.from_env("tracking"), build_server)
