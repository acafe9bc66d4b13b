"""Couriers' positions from location_svc: one FollowDrivers stream for every courier this
process follows, whatever their number (a stream per courier would meet the connection's limit
of concurrent streams at the thousandth courier, and pay a stream's overhead for each)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc

logger = logging.getLogger(__name__)

#: Ids per request message (location_svc takes up to 1,000).
_CHUNK = 500


class PositionFollower:
    """Follows couriers on one FollowDrivers stream, opened again after a loss with every
    courier still followed (each one's last position comes first again, so nothing is frozen).
    ``on_location`` gets every position; ``on_unknown`` the couriers location_svc does not know.
    """

    def __init__(
        self,
        stub: location_service_pb2_grpc.LocationServiceStub,
        metadata: tuple[tuple[str, str], ...],
        on_location: Callable[[location_pb2.DriverLocation], None],
        on_unknown: Callable[[str], None] = lambda driver_id: None,
        *,
        retry_s: float = 0.2,
        max_retry_s: float = 5.0,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._on_location = on_location
        self._on_unknown = on_unknown
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._followed: set[str] = set()
        self._adds: set[str] = set()
        self._drops: set[str] = set()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._call: grpc.aio.StreamStreamCall | None = None
        #: FollowDrivers streams opened so far (1 unless one was lost).
        self.streams_opened = 0
        #: Streams lost so far.
        self.errors = 0

    @property
    def followed(self) -> frozenset[str]:
        return frozenset(self._followed)

    def follow(self, driver_id: str) -> None:
        if driver_id in self._followed:
            return
        self._followed.add(driver_id)
        self._drops.discard(driver_id)
        self._adds.add(driver_id)
        self._changed.set()

    def unfollow(self, driver_id: str) -> None:
        if driver_id not in self._followed:
            return
        self._followed.discard(driver_id)
        self._adds.discard(driver_id)
        self._drops.add(driver_id)
        self._changed.set()

    async def _requests(self) -> AsyncIterator[location_service_pb2.FollowDriversRequest]:
        # A new stream starts from everything followed now; changes flow after it.
        self._adds, self._drops = set(), set()
        self._changed.clear()
        everyone = list(self._followed)
        for start in range(0, len(everyone), _CHUNK):
            yield location_service_pb2.FollowDriversRequest(
                follow_driver_ids=everyone[start : start + _CHUNK]
            )
        while True:
            await self._changed.wait()
            self._changed.clear()
            adds, drops = list(self._adds), list(self._drops)
            self._adds, self._drops = set(), set()
            for start in range(0, max(len(adds), len(drops)), _CHUNK):
                yield location_service_pb2.FollowDriversRequest(
                    follow_driver_ids=adds[start : start + _CHUNK],
                    unfollow_driver_ids=drops[start : start + _CHUNK],
                )

    async def run(self) -> None:
        """Keeps the stream open until :meth:`stop`."""
        delay = self._retry_s
        while not self._stopping.is_set():
            if not self._followed:
                # Nobody followed: no stream is held until somebody is.
                self._changed.clear()
                await self._changed.wait()
                continue
            self.streams_opened += 1
            call = self._stub.FollowDrivers(self._requests(), metadata=self._metadata)
            self._call = call
            try:
                async for response in call:
                    delay = self._retry_s
                    for location in response.locations:
                        self._on_location(location)
                    for driver_id in response.unknown_driver_ids:
                        self._on_unknown(driver_id)
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as err:
                if self._stopping.is_set():
                    return
                self.errors += 1
                logger.warning("courier position stream lost (%s); opening it again", err.code())
            except Exception:
                # Never a silent end: every watcher's positions depend on this one stream.
                call.cancel()
                self.errors += 1
                logger.exception("courier position stream failed; opening it again")
            finally:
                self._call = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_s)

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        if self._call is not None:
            self._call.cancel()
