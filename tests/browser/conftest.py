"""The browser tests' world: the four services and the edge as real servers on loopback, with
the built pages, and a headless Chromium (Debian's, at /usr/bin/chromium) driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from aiohttp import web

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from delivery.order.v1 import order_pb2, order_service_pb2
from edge.app import EdgeConfig, build_app
from edge.pages import STATIC_DIR
from location_svc.server import build_server as build_location
from matching_svc.server import build_server as build_matching
from mesh.server import MeshServer
from mesh.settings import Settings, StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server as build_order
from tests.integration.marketplace import Caller, Market

if TYPE_CHECKING:
    from playwright.async_api import Browser
from tracking_svc.live import LiveRules
from tracking_svc.server import build_server as build_tracking
from tracking_svc.settings import TrackingSettings

#: The browser the tests drive; DELIVERY_TEST_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("DELIVERY_TEST_CHROMIUM", "/usr/bin/chromium")
#: How long tracking waits for a courier's next fix before it calls their position stale.
STALE_AFTER_S = 2.0
#: The flags the issue asks for: headless, no sandbox (root in a container), nothing fetched.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Web:
    """The running mesh as a browser and a test's own native clients see it."""

    #: The edge's address, e.g. ``http://127.0.0.1:41234``.
    url: str
    market: Market
    channels: dict[str, object]
    stores: Stores
    settings: Settings


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, after checking that everything the browser tests need is there."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright for Python: .venv/bin/pip install -e '.[dev]' "
            "(it pins playwright==1.65.2; no `playwright install` is needed)",
            pytrace=False,
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"the browser tests drive Debian's Chromium at {CHROMIUM}, which is missing: install "
            "it with `sudo apt-get install -y chromium` (.ci/run does), or set "
            "DELIVERY_TEST_CHROMIUM to another Chromium binary",
            pytrace=False,
        )
    if not (STATIC_DIR / "customer.html").exists():
        pytest.fail(
            f"no built pages in {STATIC_DIR}: run `npm ci` and "
            "`.venv/bin/python scripts/build_web.py`",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """One headless Chromium for the session (each test opens its own context)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@contextlib.asynccontextmanager
async def _edge(routes: dict[str, str]) -> AsyncIterator[str]:
    app, _ = build_app(EdgeConfig(routes=routes))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _open_orders(stores: Stores) -> set[str]:
    assert stores.pool is not None
    rows = await stores.pool.fetch(
        "SELECT id::text FROM orders WHERE status NOT IN ('delivered', 'cancelled')"
    )
    return {row[0] for row in rows}


async def _cancel_left_open(market: Market, order_ids: set[str]) -> None:
    """Cancels, as an operator, the orders a test left open. The test database lives for the
    whole run, and any later test's dispatcher would otherwise offer them to its own couriers
    near the same shops (seen: a merchant-page order, left preparing, offered to the tracking
    test's courier)."""
    if not order_ids:
        return
    admin = await market.admin()
    for order_id in sorted(order_ids):
        await market.orders.CancelOrder(
            order_service_pb2.CancelOrderRequest(
                order_id=order_id,
                request_id=uuid.uuid4().hex,
                reason=order_pb2.CANCEL_REASON_OPERATOR,
                note="left open by a browser test",
            ),
            metadata=admin.metadata,
        )


async def _off_shift(channel: grpc.aio.Channel, drivers: list[Caller]) -> None:
    """Takes a test's couriers off shift: the geo index lives for the whole run, and a later
    test's dispatcher would otherwise offer its orders to them first (and wait out the offer)."""
    location = location_service_pb2_grpc.LocationServiceStub(channel)
    for driver in drivers:
        await location.SetAvailability(
            location_service_pb2.SetAvailabilityRequest(
                request_id=uuid.uuid4().hex, status=common_pb2.DRIVER_STATUS_OFFLINE
            ),
            metadata=driver.metadata,
        )


@pytest.fixture
async def mesh_web(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Web]:
    """order, location, matching and tracking as gRPC servers, and the edge in front of them."""
    settings = {
        name: settings_for_test(name, store_settings)
        for name in ("order", "location", "matching", "tracking")
    }
    # Only this test's events: a shared test Redis keeps older runs' streams.
    suffix = uuid.uuid4().hex[:8]
    async with serving(build_location, settings["location"], stores) as (location, location_ch):
        location_addr = f"127.0.0.1:{location.port}"

        async def matching(s: Settings, st: Stores) -> MeshServer:
            return await build_matching(
                s,
                st,
                location_addr=location_addr,
                tick_s=0.05,
                group_start_id="$",
                consumer_group=f"matching-{suffix}",
            )

        async def tracking(s: Settings, st: Stores) -> MeshServer:
            return await build_tracking(
                s,
                st,
                # A courier two seconds silent is stale: the customer page's notice shows soon.
                tracking=TrackingSettings(live=LiveRules(stale_after_s=STALE_AFTER_S)),
                location_addr=location_addr,
                group_start_id="$",
                consumer_group=f"tracking-{suffix}",
            )

        async with (
            serving(build_order, settings["order"], stores) as (order, order_ch),
            serving(matching, settings["matching"], stores) as (match, matching_ch),
            serving(tracking, settings["tracking"], stores) as (track, tracking_ch),
        ):
            routes = {
                "delivery.order.v1": f"127.0.0.1:{order.port}",
                "delivery.location.v1": location_addr,
                "delivery.matching.v1": f"127.0.0.1:{match.port}",
                "delivery.tracking.v1": f"127.0.0.1:{track.port}",
            }
            market = Market(order_ch, stores, settings["order"])
            before = await _open_orders(stores)
            async with _edge(routes) as url:
                yield Web(
                    url,
                    market,
                    {"location": location_ch, "matching": matching_ch, "tracking": tracking_ch},
                    stores,
                    settings["order"],
                )
            await _cancel_left_open(market, (await _open_orders(stores)) - before)
            await _off_shift(location_ch, market.drivers)
