"""A session that ends elsewhere (signed out in another tab, revoked) ends on the page too: the
next call the page makes is refused UNAUTHENTICATED, and the page goes back to signing in and
says why, instead of showing the server's message under a "Signed in as" that is no longer true."""

from __future__ import annotations

import uuid
from pathlib import Path

from playwright.async_api import Browser, expect

from delivery.order.v1 import account_service_pb2
from mesh.testing import bearer
from tests.browser.browsing import Screens, open_page
from tests.browser.conftest import Web


async def test_a_session_signed_out_elsewhere_sends_the_page_back_to_signing_in(
    mesh_web: Web, browser: Browser, tmp_path: Path
) -> None:
    async with open_page(browser) as (page, errors):
        shots = Screens(tmp_path, page)
        await page.goto(f"{mesh_web.url}/customer.html")
        form = page.get_by_role("form", name="New here? Create an account")
        await form.get_by_label("Name").fill("Aino Customer")
        await form.get_by_label("Email").fill(f"aino-{uuid.uuid4().hex[:8]}@example.com")
        await form.get_by_label("Password").fill("password123")
        await form.get_by_role("button", name="Create account").click()
        await expect(page.get_by_test_id("signed-in")).to_contain_text("Aino Customer")

        # Another tab with the same session signs out.
        token = await page.evaluate("sessionStorage.getItem('delivery.customer.session')")
        assert token
        await mesh_web.market.accounts.Logout(
            account_service_pb2.LogoutRequest(), metadata=bearer(token)
        )

        await page.get_by_role("button", name="Find merchants near here").click()
        await expect(page.get_by_role("alert")).to_contain_text(
            "Your session ended; please sign in again."
        )
        await expect(page.get_by_role("form", name="Sign in")).to_be_visible()
        await expect(page.get_by_test_id("signed-in")).to_have_count(0)
        assert await page.evaluate("sessionStorage.getItem('delivery.customer.session')") is None
        await shots.take("customer-session-ended")
        assert errors == []
