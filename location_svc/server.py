"""Builds and runs location_svc."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from location_svc.arrivals import build_arrivals
from location_svc.domain.geofence import GeofenceRules
from location_svc.ingest import Ingest
from location_svc.service import LocationPolicy, LocationService, StatusListener
from location_svc.settings import LocationSettings
from location_svc.store.driver_index import DriverIndex
from location_svc.store.drivers import DriverStore
from location_svc.store.history import HistoryWriter
from location_svc.watch import PositionHub
from mesh.server import (
    MeshServer,
    ServiceBinding,
    build_mesh_server,
    consumer_name,
    run_service,
)
from mesh.settings import Settings
from mesh.stores import Stores

logger = logging.getLogger(__name__)

SERVICE_NAME = location_service_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name


class Sweeper:
    """Takes silent drivers out of the index every ``interval_s`` (presence is a TTL)."""

    def __init__(self, index: DriverIndex, interval_s: float = 1.0) -> None:
        self._index = index
        self._interval_s = interval_s
        self._stopping = asyncio.Event()
        #: Drivers removed so far.
        self.removed = 0

    async def run(self) -> None:
        """Sweeps until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                self.removed += await self._index.sweep()
            except Exception as exc:
                logger.warning("presence sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def stop(self) -> None:
        """Asks :meth:`run` to return."""
        self._stopping.set()


async def build_server(
    settings: Settings,
    stores: Stores,
    *,
    policy: LocationPolicy | None = None,
    rules: GeofenceRules | None = None,
    hub: PositionHub | None = None,
) -> MeshServer:
    """Binds location_svc with its batcher, history writer and presence sweeper as workers.

    ``policy`` and ``rules`` default to what the environment says (:class:`LocationSettings`);
    ``hub`` (the watch streams' subscription, run as a worker here) is built if not given.
    """
    assert stores.pool is not None and stores.redis is not None
    if policy is None or rules is None:
        configured = LocationSettings.from_env()
        policy = policy or configured.policy
        rules = rules or configured.rules
    index = DriverIndex(stores.redis, presence_ttl_s=policy.presence_ttl_s)
    drivers = DriverStore(stores.redis, stores.pool)
    history = HistoryWriter(stores.pool)
    # Arrivals: fences of active orders (fed by order events), checked on every stored fix.
    _, arrivals, arrival_workers = build_arrivals(
        stores.redis, rules=rules, consumer_name=consumer_name()
    )
    ingest = Ingest(stores.redis, index, drivers, history, on_stored=arrivals.on_stored)
    # One subscription for every watch stream of this process (thousands, from tracking_svc).
    hub = hub or PositionHub(stores.redis, drivers, watch_ttl_s=policy.watch_ttl_s)
    service = LocationService(stores.redis, drivers, index, ingest, history, hub, policy)
    binding = ServiceBinding(
        SERVICE_NAME, service, location_service_pb2_grpc.add_LocationServiceServicer_to_server
    )
    server = build_mesh_server(settings, stores, [binding])
    sweeper = Sweeper(index)
    # Stop order matters: the batcher flushes its last fixes into history before history stops.
    server.add_worker(ingest.run, ingest.stop)
    server.add_worker(history.run, history.stop)
    server.add_worker(sweeper.run, sweeper.stop)
    listener = StatusListener(stores.redis, service)
    server.add_worker(listener.run, listener.stop)
    server.add_worker(hub.run, hub.stop)
    for run, stop in arrival_workers:
        server.add_worker(run, stop)
    return server


async def main() -> None:
    """Runs location_svc until SIGTERM."""
    await run_service(Settings.from_env("location"), build_server)
