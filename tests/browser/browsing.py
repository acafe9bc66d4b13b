"""What the browser tests share: where things are, screenshots, a page that records its
script errors, and the courier's phone (couriers act over native gRPC, as their app would)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from playwright.async_api import Browser, Page, expect

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from tests.integration.marketplace import Caller, Market

S = common_pb2
#: How long the page may take to show what the mesh did (a bound, not a measurement).
SHOWN_MS = 30_000
#: The pizzeria's pickup point and the customer's door, inside the road network of central
#: Helsinki (the customer page starts at the Railway Square).
SHOP = common_pb2.LatLng(latitude=60.1722, longitude=24.9460)
DOOR = (60.1699, 24.9384)

expect.set_options(timeout=SHOWN_MS)


class Screens:
    """Screenshots of one test, numbered in the order taken: under the test's temporary
    directory, or under ``$DELIVERY_TEST_SCREENSHOTS/<test>`` when that is set."""

    def __init__(self, base: Path, page: Page) -> None:
        chosen = os.environ.get("DELIVERY_TEST_SCREENSHOTS")
        self._dir = Path(chosen) / base.name if chosen else base / "screenshots"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._page = page
        self.taken: list[Path] = []

    async def take(self, name: str) -> None:
        path = self._dir / f"{len(self.taken) + 1:02d}-{name}.png"
        await self._page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        print(f"screenshot: {path}")


@contextlib.asynccontextmanager
async def open_page(browser: Browser) -> AsyncIterator[tuple[Page, list[str]]]:
    """A fresh page (its own sessionStorage) and the errors its scripts raise."""
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    try:
        yield page, errors
    finally:
        await context.close()


class Phone:
    """A courier's phone: one StreamLocation, a fix whenever told, stamped now."""

    def __init__(self, location: location_service_pb2_grpc.LocationServiceStub, courier: Caller):
        self._queue: asyncio.Queue[location_service_pb2.StreamLocationRequest | None] = (
            asyncio.Queue()
        )
        self._sequence = 0
        self.call = location.StreamLocation(self._requests(), metadata=courier.metadata)

    async def _requests(self) -> AsyncIterator[location_service_pb2.StreamLocationRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def at(self, lat: float, lng: float) -> None:
        """Sends a fix at ``(lat, lng)`` and waits for its ack."""
        self._sequence += 1
        ms = time.time_ns() // 1_000_000
        fix = location_pb2.LocationFix(
            position=common_pb2.LatLng(latitude=lat, longitude=lng),
            accuracy_meters=5.0,
            speed_mps=4.0,
            device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 10**6),
            sequence=self._sequence,
        )
        await self._queue.put(location_service_pb2.StreamLocationRequest(fix=fix))
        while True:
            ack = await asyncio.wait_for(self.call.read(), SHOWN_MS / 1000)
            assert ack is not grpc.aio.EOF
            if ack.acked_sequence >= self._sequence:
                return

    async def close(self) -> None:
        await self._queue.put(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call.code(), SHOWN_MS / 1000)


async def online(
    market: Market,
    location: location_service_pb2_grpc.LocationServiceStub,
    where: tuple[float, float],
    status: int,
) -> Caller:
    """A courier whose app reported one fresh fix at ``where``, in ``status``."""
    courier = await market.sign_up(S.ROLE_DRIVER)
    await location.SetAvailability(
        location_service_pb2.SetAvailabilityRequest(status=S.DRIVER_STATUS_AVAILABLE),
        metadata=courier.metadata,
    )
    ms = time.time_ns() // 1_000_000
    await location.ReportLocations(
        location_service_pb2.ReportLocationsRequest(
            request_id=uuid.uuid4().hex,
            fixes=[
                location_pb2.LocationFix(
                    position=common_pb2.LatLng(latitude=where[0], longitude=where[1]),
                    accuracy_meters=5.0,
                    device_time=timestamp_pb2.Timestamp(
                        seconds=ms // 1000, nanos=(ms % 1000) * 10**6
                    ),
                    sequence=1,
                )
            ],
        ),
        metadata=courier.metadata,
    )
    if status != S.DRIVER_STATUS_AVAILABLE:
        await location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(status=status), metadata=courier.metadata
        )
    return courier
