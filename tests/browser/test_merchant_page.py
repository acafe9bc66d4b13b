"""The merchant page in a real browser (headless Chromium) against the whole mesh: the owner
signs in, sees an order arrive live and confirms it by clicking; the customer orders over native
gRPC, as their app would."""

from __future__ import annotations

import uuid
from pathlib import Path

from playwright.async_api import Browser, expect

from delivery.order.v1 import account_service_pb2, merchant_service_pb2, order_service_pb2
from mesh.testing import bearer
from tests.browser.browsing import SHOP, S, Screens, open_page
from tests.browser.conftest import Web
from tests.integration.marketplace import Caller


async def test_a_merchant_confirms_an_incoming_order_by_clicking(
    mesh_web: Web, browser: Browser, tmp_path: Path
) -> None:
    market = mesh_web.market
    email, password = f"owner-{uuid.uuid4().hex[:8]}@example.com", "password123"
    signed = await market.accounts.SignUp(
        account_service_pb2.SignUpRequest(
            request_id=uuid.uuid4().hex,
            email=email,
            password=password,
            name="Olli Owner",
            role=S.ROLE_MERCHANT,
        )
    )
    owner = Caller(signed.user.user_id, bearer(signed.session_token))
    shop, pizza = await market.shop(owner, location=SHOP)
    customer = await market.sign_up(S.ROLE_CUSTOMER)

    async with open_page(browser) as (page, errors):
        shots = Screens(tmp_path, page)
        await page.goto(f"{mesh_web.url}/merchant.html")
        form = page.get_by_role("form", name="Sign in")
        await form.get_by_label("Email").fill(email)
        await form.get_by_label("Password").fill(password)
        await form.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_test_id("signed-in")).to_contain_text("Olli Owner")
        # The owner's one merchant is found and shown.
        await expect(page.locator("#shop-state")).to_contain_text(shop.name)
        await expect(page.locator("#live")).to_have_text("Live")
        await expect(page.locator("#orders-new")).to_contain_text("No new orders.")

        # A customer orders (over gRPC, as their app would): the page shows it without a reload.
        placed = (
            await market.orders.CreateOrder(
                market.order_request(shop, pizza, distance_m=600), metadata=customer.metadata
            )
        ).order
        card = page.locator(f'#orders-new li[data-order-id="{placed.order_id}"]')
        await expect(card).to_contain_text("2 \u00d7 Margherita (L, Olives, Egg)")
        await expect(page.locator("#feed")).not_to_be_empty()
        await shots.take("merchant-new-order")

        await card.get_by_label("Preparation minutes", exact=False).fill("12")
        await card.get_by_role("button", name="Confirm").click()
        kitchen = page.locator(f'#orders-kitchen li[data-order-id="{placed.order_id}"]')
        await expect(kitchen).to_have_attribute("data-status", "CONFIRMED")
        confirmed = await market.orders.GetOrder(
            order_service_pb2.GetOrderRequest(order_id=placed.order_id),
            metadata=customer.metadata,
        )
        assert confirmed.order.status == S.ORDER_STATUS_CONFIRMED
        assert confirmed.order.estimated_prep_duration.seconds == 12 * 60

        await kitchen.get_by_role("button", name="Start preparing").click()
        await expect(kitchen).to_have_attribute("data-status", "PREPARING")

        # The pizza runs out: unticked, customers cannot order it.
        await page.locator(f'#menu input[data-item-id="{pizza.menu_item_id}"]').uncheck()
        await expect(page.locator("#menu")).to_contain_text("unavailable")
        await shots.take("merchant-confirmed")
        menu = await market.merchants.ListMenuItems(
            merchant_service_pb2.ListMenuItemsRequest(merchant_id=shop.merchant_id),
            metadata=owner.metadata,
        )
        assert [(i.name, i.available) for i in menu.menu_items] == [("Margherita", False)]
        assert errors == []
    preparing = await market.orders.GetOrder(
        order_service_pb2.GetOrderRequest(order_id=placed.order_id), metadata=owner.metadata
    )
    assert preparing.order.status == S.ORDER_STATUS_PREPARING
