"""location_svc as dispatch sees it, over gRPC and through a circuit breaker: couriers near a
point, and their status (busy while they carry orders, available again once they carry none)."""

from __future__ import annotations

import logging

import asyncpg
import grpc

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from location_svc.service import MAX_LIMIT
from matching_svc.dispatcher import Nearby
from mesh.breaker import CircuitBreaker

logger = logging.getLogger(__name__)


class LocationLocator:
    """The couriers near a point, nearest first, as location_svc sees them."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        breaker: CircuitBreaker,
    ) -> None:
        self._stub = location_service_pb2_grpc.LocationServiceStub(channel)
        self._metadata = metadata
        self.breaker = breaker

    async def nearby(
        self, lat: float, lng: float, radius_m: float, limit: int, *, include_busy: bool = False
    ) -> list[Nearby]:
        request = location_service_pb2.FindNearbyDriversRequest(
            center=common_pb2.LatLng(latitude=lat, longitude=lng),
            radius_meters=radius_m,
            limit=min(limit, MAX_LIMIT),
            include_busy=include_busy,
        )
        timeout = self.breaker.settings.call_timeout_s

        async def call() -> location_service_pb2.FindNearbyDriversResponse:
            return await self._stub.FindNearbyDrivers(
                request, metadata=self._metadata, timeout=timeout
            )

        response = await self.breaker.call(call)
        busy = common_pb2.DRIVER_STATUS_BUSY
        return [
            Nearby(
                d.driver_id,
                d.distance_meters,
                d.position.latitude,
                d.position.longitude,
                d.status == busy,
            )
            for d in response.drivers
        ]

    async def set_status(self, driver_id: str, status: common_pb2.DriverStatus) -> None:
        request = location_service_pb2.SetAvailabilityRequest(driver_id=driver_id, status=status)
        timeout = self.breaker.settings.call_timeout_s

        async def call() -> location_service_pb2.SetAvailabilityResponse:
            return await self._stub.SetAvailability(
                request, metadata=self._metadata, timeout=timeout
            )

        await self.breaker.call(call)


class CourierStatus:
    """Keeps a courier's status in step with their load, as PostgreSQL has it when an order
    event arrives (so a repeated or late event changes nothing): busy while they carry orders,
    available again once they carry none, and never out of offline, which is the courier's own
    choice. Best effort: dispatch never relies on it (it asks for busy couriers as well and
    judges each by their load), so a failure is logged, not retried."""

    def __init__(self, pool: asyncpg.Pool, locator: LocationLocator) -> None:
        self._pool = pool
        self._locator = locator

    async def follow(self, driver_id: str) -> None:
        """Sets the courier busy or available by their current load (offline stays)."""
        row = await self._pool.fetchrow(
            "SELECT status, active_order_count FROM drivers WHERE id = $1::uuid", driver_id
        )
        if row is None or row["status"] == "offline":
            return
        if row["active_order_count"] > 0 and row["status"] != "busy":
            await self._set(driver_id, common_pb2.DRIVER_STATUS_BUSY, "busy")
        elif row["active_order_count"] == 0 and row["status"] == "busy":
            await self._set(driver_id, common_pb2.DRIVER_STATUS_AVAILABLE, "available")

    async def _set(self, driver_id: str, status: common_pb2.DriverStatus, name: str) -> None:
        try:
            await self._locator.set_status(driver_id, status)
        except Exception as exc:
            logger.warning("could not mark courier %s %s: %s", driver_id, name, exc)
