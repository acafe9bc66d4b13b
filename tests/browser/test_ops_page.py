"""The operations page in a real browser (headless Chromium) against the whole mesh: an
operator sees the couriers (LocationService.GetFleet through the edge) and open orders, finds a
stuck order and reassigns it by clicking."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from playwright.async_api import Browser, expect

from delivery.location.v1 import location_service_pb2_grpc
from delivery.order.v1 import order_service_pb2
from tests.browser.browsing import SHOP, SHOWN_MS, S, Screens, online, open_page
from tests.browser.conftest import Web
from tests.polling import eventually


async def test_an_operator_sees_the_fleet_and_reassigns_a_stuck_order_by_clicking(
    mesh_web: Web, browser: Browser, tmp_path: Path
) -> None:
    market = mesh_web.market
    location = location_service_pb2_grpc.LocationServiceStub(mesh_web.channels["location"])
    owner = await market.sign_up(S.ROLE_MERCHANT)
    shop, pizza = await market.shop(owner, location=SHOP)
    customer = await market.sign_up(S.ROLE_CUSTOMER)
    free = await online(market, location, (60.1710, 24.9420), S.DRIVER_STATUS_AVAILABLE)
    carrying = await online(market, location, (60.1690, 24.9440), S.DRIVER_STATUS_BUSY)
    # An order its courier does not move on: confirmed, assigned, and left there.
    order = (
        await market.orders.CreateOrder(
            market.order_request(shop, pizza, distance_m=500), metadata=customer.metadata
        )
    ).order
    await market.orders.ConfirmOrder(
        order_service_pb2.ConfirmOrderRequest(order_id=order.order_id, request_id=uuid.uuid4().hex),
        metadata=owner.metadata,
    )
    await market.orders.AssignCourier(
        order_service_pb2.AssignCourierRequest(
            order_id=order.order_id, driver_id=carrying.user_id, request_id=uuid.uuid4().hex
        ),
        metadata=market.matching,
    )
    admin = await market.admin()
    token = dict(admin.metadata)["authorization"].removeprefix("Bearer ")

    async with open_page(browser) as (page, errors):
        shots = Screens(tmp_path, page)
        # Admins are made by operators, not signed up: the page gets the session a sign-in
        # would have stored.
        await page.add_init_script(f"sessionStorage.setItem('delivery.ops.session', {token!r});")
        await page.goto(f"{mesh_web.url}/ops.html")
        await expect(page.get_by_test_id("signed-in")).to_be_visible()
        # Both couriers on the map (LocationService.GetFleet through the edge), by status.
        await expect(
            page.locator(f'.pin-available[data-driver-id="{free.user_id}"]')
        ).to_have_count(1)
        await expect(page.locator(f'.pin-busy[data-driver-id="{carrying.user_id}"]')).to_have_count(
            1
        )
        await expect(page.locator("#map-status")).to_contain_text("couriers in view (1 busy)")
        await expect(page.locator(f'#open tr[data-order-id="{order.order_id}"]')).to_be_visible()

        # Stuck for more than six seconds: listed once it has been.
        await page.get_by_label("In the same state for more than").fill("0.1")
        row = page.locator(f'#stuck tr[data-order-id="{order.order_id}"]')

        async def listed() -> bool:
            if await row.count():
                return True
            await page.get_by_role("button", name="Look again").click()
            return False

        await asyncio.wait_for(eventually(listed, every_s=1.0), SHOWN_MS / 1000)
        await shots.take("ops-fleet-and-stuck")
        await row.get_by_role("button", name="Reassign…").click()
        await page.get_by_label("New courier").fill(free.user_id)
        await page.get_by_label("Reason").fill("courier stopped moving")
        await page.get_by_role("button", name="Reassign", exact=True).click()
        await expect(page.locator("#reassign-alert")).to_contain_text("is now with courier")
        await shots.take("ops-reassigned")
        assert errors == []
    reassigned = await market.orders.GetOrder(
        order_service_pb2.GetOrderRequest(order_id=order.order_id), metadata=admin.metadata
    )
    assert reassigned.order.driver_id == free.user_id
