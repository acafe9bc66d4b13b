"""The customer page in a real browser (headless Chromium) against the whole mesh: a customer
signs up, orders by clicking, and watches the courier come; the courier and the merchant act
over native gRPC, as their apps would. Screenshots: see tests/browser/browsing.py."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from delivery.order.v1 import order_service_pb2
from mesh.geo import haversine_m
from tests.browser.browsing import DOOR, SHOP, SHOWN_MS, Phone, S, Screens, open_page
from tests.browser.conftest import Web
from tests.polling import eventually


def _between(
    a: tuple[float, float], b: tuple[float, float], steps: int
) -> list[tuple[float, float]]:
    """``steps`` points from ``a`` (excluded) to ``b`` (included) on a straight line."""
    return [
        (a[0] + (b[0] - a[0]) * i / steps, a[1] + (b[1] - a[1]) * i / steps)
        for i in range(1, steps + 1)
    ]


async def _marker(page: Page) -> tuple[float, float, float] | None:
    """Where the customer page's courier marker stands (its coordinates) and how far it is
    drawn from the delivery point's marker, in pixels; None if it shows none."""
    marker = page.get_by_test_id("courier-marker")
    if await marker.count() == 0:
        return None
    lat, lng = await marker.get_attribute("data-lat"), await marker.get_attribute("data-lng")
    drawn = await marker.bounding_box()
    home = await page.get_by_test_id("home-marker").bounding_box()
    if not (lat and lng and drawn and home):
        return None
    apart = math.hypot(
        drawn["x"] + drawn["width"] / 2 - home["x"] - home["width"] / 2,
        drawn["y"] + drawn["height"] / 2 - home["y"] - home["height"] / 2,
    )
    return float(lat), float(lng), apart


async def test_a_customer_orders_by_clicking_and_watches_the_courier_come(
    mesh_web: Web, browser: Browser, tmp_path: Path
) -> None:
    market = mesh_web.market
    owner = await market.sign_up(S.ROLE_MERCHANT)
    shop, pizza = await market.shop(owner, location=SHOP)
    location = location_service_pb2_grpc.LocationServiceStub(mesh_web.channels["location"])
    matching = matching_service_pb2_grpc.MatchingServiceStub(mesh_web.channels["matching"])

    async with open_page(browser) as (page, errors):
        shots = Screens(tmp_path, page)
        await page.goto(f"{mesh_web.url}/customer.html")
        # Sign up.
        form = page.get_by_role("form", name="New here? Create an account")
        await form.get_by_label("Name").fill("Aino Customer")
        await form.get_by_label("Email").fill(f"aino-{uuid.uuid4().hex[:8]}@example.com")
        await form.get_by_label("Password").fill("password123")
        await form.get_by_role("button", name="Create account").click()
        await expect(page.get_by_test_id("signed-in")).to_contain_text("Aino Customer")
        # Choose the merchant near the default delivery point, a pizza size, and order.
        choose = page.locator(f'button[data-merchant-id="{shop.merchant_id}"]')
        await choose.click()
        item = page.locator(f'fieldset[data-item-id="{pizza.menu_item_id}"]')
        await item.get_by_label("M", exact=True).check()
        await item.get_by_label("Basil").check()
        await item.get_by_label("Quantity").fill("2")
        await item.get_by_role("button", name="Add Margherita").click()
        await expect(page.locator("#cart-lines")).to_contain_text("2 \u00d7 Margherita (M, Basil)")
        await shots.take("customer-cart")
        await page.get_by_role("button", name="Place order").click()
        status = page.locator("#order-status")
        await expect(status).to_have_attribute("data-status", "PENDING")

        # The order is in the mesh as the page placed it.
        listed = await market.orders.ListOrders(
            order_service_pb2.ListOrdersRequest(), metadata=owner.metadata
        )
        (order,) = [o for o in listed.orders if o.merchant_id == shop.merchant_id]
        assert [(i.quantity, i.name) for i in order.items] == [(2, "Margherita")]
        assert sorted(o.name for o in order.items[0].options) == ["Basil", "M"]
        assert (order.delivery_location.latitude, order.delivery_location.longitude) == DOOR
        pin = (await page.locator("#order-pin .pin-code").inner_text()).strip()
        assert len(pin) >= 4
        await expect(page.locator("#steps [aria-current=step]")).to_have_text("Placed")
        await shots.take("customer-placed")

        # The merchant confirms and prepares it.
        ref = {"order_id": order.order_id}
        await market.orders.ConfirmOrder(
            order_service_pb2.ConfirmOrderRequest(**ref, request_id=uuid.uuid4().hex),
            metadata=owner.metadata,
        )
        await expect(status).to_have_attribute("data-status", "CONFIRMED")
        await market.orders.MarkOrderReady(
            order_service_pb2.MarkOrderReadyRequest(**ref, request_id=uuid.uuid4().hex),
            metadata=owner.metadata,
        )
        await expect(status).to_have_attribute("data-status", "READY_FOR_PICKUP")
        await expect(page.locator("#eta")).to_contain_text("Arrives in about")

        # A courier near the shop comes online, is offered the order and takes it.
        courier = await market.sign_up(S.ROLE_DRIVER)
        phone = Phone(location, courier)
        offers = matching.StreamOffers(
            matching_service_pb2.StreamOffersRequest(), metadata=courier.metadata
        )
        try:
            start = (SHOP.latitude - 0.0025, SHOP.longitude + 0.001)
            await phone.at(*start)
            await location.SetAvailability(
                location_service_pb2.SetAvailabilityRequest(
                    request_id=uuid.uuid4().hex, status=S.DRIVER_STATUS_AVAILABLE
                ),
                metadata=courier.metadata,
            )
            admin = await market.admin()
            await matching.DispatchOrder(
                matching_service_pb2.DispatchOrderRequest(order_id=order.order_id),
                metadata=admin.metadata,
            )
            offered = await asyncio.wait_for(offers.read(), SHOWN_MS / 1000)
            assert offered.offer.order_id == order.order_id
            await matching.AcceptOffer(
                matching_service_pb2.AcceptOfferRequest(
                    offer_id=offered.offer.offer_id, request_id=uuid.uuid4().hex
                ),
                metadata=courier.metadata,
            )
            await expect(page.locator("#notices")).to_contain_text("A courier accepted")

            # To the shop, a few metres a second: the page's marker follows.
            shop_at = (SHOP.latitude, SHOP.longitude)
            seen: list[tuple[float, float, float]] = []

            async def look() -> None:
                shown = await _marker(page)
                if shown is not None and (not seen or seen[-1][:2] != shown[:2]):
                    seen.append(shown)

            for where in _between(start, shop_at, 6):
                await phone.at(*where)
                await asyncio.sleep(0.4)
                await look()
            await expect(page.get_by_test_id("courier-marker")).to_be_visible()
            await shots.take("customer-courier-to-shop")
            await market.orders.PickUpOrder(
                order_service_pb2.PickUpOrderRequest(**ref, request_id=uuid.uuid4().hex),
                metadata=courier.metadata,
            )
            await expect(status).to_have_attribute("data-status", "PICKED_UP")
            # Then to the customer's door.
            for where in _between(shop_at, DOOR, 10):
                await phone.at(*where)
                await asyncio.sleep(0.4)
                await look()
            # The marker ends drawn on the door once the page has the last position (and its
            # glide there is over).
            await expect(page.get_by_test_id("courier-marker")).to_have_attribute(
                "data-lat", f"{DOOR[0]:.6f}"
            )

            async def drawn_on_the_door() -> bool:
                shown = await _marker(page)
                if shown is None or shown[2] >= 6:
                    return False
                seen.append(shown)
                return True

            await asyncio.wait_for(eventually(drawn_on_the_door, every_s=0.1), SHOWN_MS / 1000)
            await shots.take("customer-courier-at-door")
            assert len({where[:2] for where in seen}) >= 3, f"the marker hardly moved: {seen}"
            (first_lat, first_lng, first_px), (last_lat, last_lng, last_px) = seen[0], seen[-1]
            assert haversine_m(last_lat, last_lng, *DOOR) < 1
            assert haversine_m(first_lat, first_lng, *DOOR) > 300, seen
            # Drawn where it stands: far from the door at first, on it at the end.
            assert first_px > last_px + 50, seen

            # The phone goes quiet at the door: the page says the position may be out of date.
            stale = page.locator("#stale")
            await expect(stale).to_be_visible()
            await expect(stale).to_contain_text("has not been updated")
            await expect(page.get_by_test_id("courier-marker")).to_have_class(re.compile("stale"))
            await shots.take("customer-courier-stale")
            # A fix again: live once more.
            await phone.at(*DOOR)
            await expect(stale).to_be_hidden()

            # Handed over with the PIN the page shows the customer.
            await market.orders.CompleteDelivery(
                order_service_pb2.CompleteDeliveryRequest(
                    **ref, request_id=uuid.uuid4().hex, pin=pin
                ),
                metadata=courier.metadata,
            )
        finally:
            offers.cancel()
            await phone.close()
        await expect(status).to_have_attribute("data-status", "DELIVERED")
        await expect(page.locator("#steps li.done")).to_have_count(6)

        # Rated at the end, by clicking.
        rate = page.get_by_role("form", name="How did it go?")
        await rate.locator("fieldset").nth(0).get_by_label("5").check()
        await rate.locator("fieldset").nth(1).get_by_label("4").check()
        await rate.get_by_role("button", name="Send rating").click()
        await expect(page.get_by_test_id("rated")).to_be_visible()
        await shots.take("customer-delivered-rated")
        assert errors == []
    delivered = await market.orders.GetOrder(
        order_service_pb2.GetOrderRequest(**ref), metadata=owner.metadata
    )
    assert delivered.order.status == S.ORDER_STATUS_DELIVERED
