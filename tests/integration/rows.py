"""Rows written straight into PostgreSQL for tests that need an order in a given state.

The order service's own API makes orders in the marketplace tests; tests of other services use
these to start from a state (an order confirmed, or picked up by a courier) in one step.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

SHOP = (48.8566, 2.3522)
DOOR = (48.8656, 2.3522)  # about 1 km north of the shop


async def user(conn: asyncpg.Connection, role: str) -> str:
    """A new user with ``role``; returns its id."""
    user_id: str = await conn.fetchval(
        "INSERT INTO users (email, password_hash, name, role) VALUES ($1, 'x', 'T', $2)"
        " RETURNING id::text",
        f"rows-{uuid.uuid4().hex[:12]}@example.com",
        role,
    )
    return user_id


async def courier(
    conn: asyncpg.Connection, *, vehicle: str = "bicycle", max_active: int = 2, active: int = 0
) -> str:
    """A new driver user with a courier profile; returns its id."""
    driver_id = await user(conn, "driver")
    await conn.execute(
        "INSERT INTO drivers (id, vehicle_type, max_active_orders, active_order_count)"
        " VALUES ($1::uuid, $2, $3, $4)",
        driver_id,
        vehicle,
        max_active,
        active,
    )
    return driver_id


@dataclass(frozen=True, slots=True)
class ShopOrder:
    customer: str
    owner: str
    merchant: str
    order: str
    #: The courier the order was made with, if any.
    driver: str | None


async def shop_order(
    pool: asyncpg.Pool,
    status: str,
    *,
    with_courier: bool = False,
    shop: tuple[float, float] = SHOP,
    door: tuple[float, float] = DOOR,
) -> ShopOrder:
    """A customer, a merchant and an order from it in ``status`` (with a courier if asked)."""
    async with pool.acquire() as conn, conn.transaction():
        customer, owner = await user(conn, "customer"), await user(conn, "merchant")
        driver = await courier(conn) if with_courier else None
        merchant = await conn.fetchval(
            "INSERT INTO merchants (owner_user_id, name, address, lat, lng)"
            " VALUES ($1::uuid, 'Shop', '1 Main St', $2, $3) RETURNING id::text",
            owner,
            *shop,
        )
        order = await conn.fetchval(
            "INSERT INTO orders (customer_id, merchant_id, driver_id, status, delivery_address,"
            " delivery_lat, delivery_lng, currency_code, subtotal_minor, total_minor,"
            " confirmed_at, picked_up_at)"
            " VALUES ($1::uuid, $2::uuid, $3::uuid, $4, '2 Side St', $5, $6, 'EUR', 1000, 1000,"
            " CASE WHEN $4 <> 'pending' THEN now() END,"
            " CASE WHEN $4 = 'picked_up' THEN now() END)"
            " RETURNING id::text",
            customer,
            merchant,
            driver,
            status,
            *door,
        )
    return ShopOrder(customer, owner, merchant, order, driver)
