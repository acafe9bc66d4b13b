"""Offers in PostgreSQL: one pending offer per order and courier, and the atomic accept.

Accepting races with itself (a double tap from two phones), with the expiry sweeper and with an
operator; each race must end with exactly one outcome and nothing half-done.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from matching_svc.domain.offers import OfferStatus
from matching_svc.store.offers import OfferStore
from mesh.errors import FailedPrecondition, NotFound
from mesh.stores import Stores
from order_svc.changes import assign_courier_in
from order_svc.store.orders import OrderStore
from tests.integration.rows import courier, shop_order


@pytest.fixture
def pool(stores: Stores) -> asyncpg.Pool:
    assert stores.pool is not None
    return stores.pool


@pytest.fixture
def offers(pool: asyncpg.Pool) -> OfferStore:
    return OfferStore(pool, OrderStore(pool))


async def _courier(pool: asyncpg.Pool, **kwargs: int) -> str:
    async with pool.acquire() as conn:
        return await courier(conn, **kwargs)  # type: ignore[arg-type]


async def _state(pool: asyncpg.Pool, order_id: str, driver_id: str) -> tuple:  # type: ignore[type-arg]
    """The order's courier and version, the courier's load, and the order's assign events."""
    row = await pool.fetchrow(
        "SELECT o.driver_id::text AS assigned, o.version, d.active_order_count AS load,"
        " (SELECT count(*) FROM outbox WHERE aggregate_id = o.id"
        "   AND event_type = 'order.assign_courier') AS events"
        " FROM orders o, drivers d WHERE o.id = $1::uuid AND d.id = $2::uuid",
        order_id,
        driver_id,
    )
    assert row is not None
    return row["assigned"], row["version"], row["load"], row["events"]


async def _reason(call) -> str:  # type: ignore[no-untyped-def]
    try:
        await call
    except (FailedPrecondition, NotFound) as exc:
        return exc.reason
    return "ok"


async def test_accepting_assigns_the_order_raises_the_load_and_announces_it(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    shop = await shop_order(pool, "confirmed")
    driver = await _courier(pool)
    await pool.execute(
        "INSERT INTO dispatch_jobs (order_id, state) VALUES ($1, 'offered')", shop.order
    )
    offer = await offers.create(
        shop.order, driver, attempt=1, ttl_s=30, score=0.8, factors={"distance": (0.9, 0.4)}
    )
    assert offer.status is OfferStatus.PENDING and offer.factors == {"distance": (0.9, 0.4)}
    accepted, order = await offers.accept(offer.offer_id, driver)
    assert accepted.status is OfferStatus.ACCEPTED and accepted.responded_at is not None
    assert order.driver_id == driver
    assert await _state(pool, shop.order, driver) == (driver, 2, 1, 1)
    history = await pool.fetchrow(
        "SELECT reason, actor_id::text, actor_role FROM order_status_history"
        " WHERE order_id = $1::uuid ORDER BY id DESC",
        shop.order,
    )
    # The courier who accepted is on record, not an anonymous system.
    assert tuple(history) == (f"offer {offer.offer_id}", driver, "driver")
    job = await pool.fetchval(
        "SELECT state FROM dispatch_jobs WHERE order_id = $1::uuid", shop.order
    )
    assert job == "assigned"


async def test_of_concurrent_accepts_exactly_one_wins(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    shop = await shop_order(pool, "preparing")
    driver = await _courier(pool)
    offer = await offers.create(shop.order, driver, attempt=1, ttl_s=30)
    outcomes = await asyncio.gather(
        *(_reason(offers.accept(offer.offer_id, driver)) for _ in range(8))
    )
    assert sorted(outcomes) == ["OFFER_ALREADY_ACCEPTED"] * 7 + ["ok"]
    assert await _state(pool, shop.order, driver) == (driver, 2, 1, 1)


async def test_an_accept_racing_the_expiry_ends_one_way_only(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    """Offers expiring right now, accepted while the sweeper runs: each ends accepted (and
    assigned) or expired (and the accept refused), never both, never neither."""
    made = []
    for _ in range(12):
        shop = await shop_order(pool, "confirmed")
        driver = await _courier(pool)
        made.append(
            (shop.order, driver, await offers.create(shop.order, driver, attempt=1, ttl_s=0.15))
        )
    await asyncio.sleep(0.1)

    async def sweep() -> set[str]:
        expired: set[str] = set()
        for _ in range(20):
            expired |= {o.offer_id for o in await offers.expire_due()}
            await asyncio.sleep(0.01)
        return expired

    sweeper = asyncio.create_task(sweep())
    outcomes = []
    for _, driver, offer in made:
        outcomes.append(await _reason(offers.accept(offer.offer_id, driver)))
        await asyncio.sleep(0.01)
    expired = await sweeper
    expired |= {o.offer_id for o in await offers.expire_due()}
    for (order_id, driver, offer), outcome in zip(made, outcomes, strict=True):
        final = await offers.get(offer.offer_id)
        assert final is not None
        assigned, _, load, events = await _state(pool, order_id, driver)
        if outcome == "ok":
            assert final.status is OfferStatus.ACCEPTED and offer.offer_id not in expired
            assert (assigned, load, events) == (driver, 1, 1)
        else:
            assert outcome == "OFFER_EXPIRED"
            assert final.status is OfferStatus.EXPIRED and offer.offer_id in expired
            assert (assigned, load, events) == (None, 0, 0)


async def test_an_expired_offer_cannot_be_answered_even_before_the_sweeper_runs(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    shop = await shop_order(pool, "confirmed")
    driver = await _courier(pool)
    offer = await offers.create(shop.order, driver, attempt=1, ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert await _reason(offers.accept(offer.offer_id, driver)) == "OFFER_EXPIRED"
    assert await _reason(offers.decline(offer.offer_id, driver, None)) == "OFFER_EXPIRED"
    assert [o.offer_id for o in await offers.expire_due() if o.order_id == shop.order] == [
        offer.offer_id
    ]
    assert await _state(pool, shop.order, driver) == (None, 1, 0, 0)


async def test_an_order_an_operator_gave_another_courier_withdraws_the_offer(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    shop = await shop_order(pool, "confirmed")
    driver, other = await _courier(pool), await _courier(pool)
    offer = await offers.create(shop.order, driver, attempt=1, ttl_s=30)
    async with pool.acquire() as conn, conn.transaction():
        await assign_courier_in(
            conn, OrderStore(pool), shop.order, other, reason="operator", now=offer.offered_at
        )
    assert await _reason(offers.accept(offer.offer_id, driver)) == "COURIER_ALREADY_ASSIGNED"
    final = await offers.get(offer.offer_id)
    assert final is not None and final.status is OfferStatus.WITHDRAWN
    assert await _state(pool, shop.order, driver) == (other, 2, 0, 1)


async def test_a_courier_at_capacity_cannot_accept_and_nothing_changes(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    shop = await shop_order(pool, "confirmed")
    driver = await _courier(pool, max_active=1, active=1)
    offer = await offers.create(shop.order, driver, attempt=1, ttl_s=30)
    assert await _reason(offers.accept(offer.offer_id, driver)) == "DRIVER_AT_CAPACITY"
    final = await offers.get(offer.offer_id)
    assert final is not None and final.status is OfferStatus.PENDING
    assert await _state(pool, shop.order, driver) == (None, 1, 1, 0)


async def test_one_pending_offer_per_order_and_per_courier(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    first, second = await shop_order(pool, "confirmed"), await shop_order(pool, "confirmed")
    driver, other = await _courier(pool), await _courier(pool)
    await offers.create(first.order, driver, attempt=1, ttl_s=30)
    assert (
        await _reason(offers.create(first.order, other, attempt=2, ttl_s=30))
        == "ORDER_HAS_PENDING_OFFER"
    )
    assert (
        await _reason(offers.create(second.order, driver, attempt=1, ttl_s=30))
        == "DRIVER_HAS_PENDING_OFFER"
    )


async def test_declining_and_answering_someone_elses_offer(
    pool: asyncpg.Pool, offers: OfferStore
) -> None:
    shop = await shop_order(pool, "confirmed")
    driver, other = await _courier(pool), await _courier(pool)
    offer = await offers.create(shop.order, driver, attempt=1, ttl_s=30)
    assert await _reason(offers.accept(offer.offer_id, other)) == "OFFER_NOT_FOUND"
    assert await _reason(offers.decline(offer.offer_id, other, None)) == "OFFER_NOT_FOUND"
    declined = await offers.decline(offer.offer_id, driver, "too_far")
    assert declined.status is OfferStatus.DECLINED and declined.decline_reason == "too_far"
    assert await _reason(offers.accept(offer.offer_id, driver)) == "OFFER_DECLINED"
    # The order is free for the next courier's offer.
    await offers.create(shop.order, other, attempt=2, ttl_s=30)
