"""Candidates from location_svc: FindNearbyDrivers over gRPC, through a circuit breaker."""

from __future__ import annotations

import grpc

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from location_svc.service import MAX_LIMIT
from matching_svc.dispatcher import Nearby
from mesh.breaker import CircuitBreaker


class LocationLocator:
    """The available couriers near a point, nearest first, as location_svc sees them."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        breaker: CircuitBreaker,
    ) -> None:
        self._stub = location_service_pb2_grpc.LocationServiceStub(channel)
        self._metadata = metadata
        self.breaker = breaker

    async def nearby(self, lat: float, lng: float, radius_m: float, limit: int) -> list[Nearby]:
        request = location_service_pb2.FindNearbyDriversRequest(
            center=common_pb2.LatLng(latitude=lat, longitude=lng),
            radius_meters=radius_m,
            limit=min(limit, MAX_LIMIT),
        )
        timeout = self.breaker.settings.call_timeout_s

        async def call() -> location_service_pb2.FindNearbyDriversResponse:
            return await self._stub.FindNearbyDrivers(
                request, metadata=self._metadata, timeout=timeout
            )

        response = await self.breaker.call(call)
        return [Nearby(d.driver_id, d.distance_meters) for d in response.drivers]
