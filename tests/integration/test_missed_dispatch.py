"""matching_svc finds orders that wait for a courier without a dispatch job (their confirmation
event was lost, say with Redis's data) and makes the job the event would have made."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from matching_svc.store.jobs import JobStore
from mesh.stores import Stores
from tests.integration.rows import shop_order

#: Other tests of the run leave orders behind: the sweep may take them all.
EVERYONE = 1_000_000


async def _job(pool: asyncpg.Pool, order_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT j.state, j.attempts, j.max_attempts, j.next_attempt_at, o.confirmed_at"
        " FROM dispatch_jobs j JOIN orders o ON o.id = j.order_id WHERE j.order_id = $1::uuid",
        order_id,
    )


async def test_orders_waiting_without_a_job_get_the_job_their_event_would_have_made(
    stores: Stores,
) -> None:
    assert stores.pool is not None
    pool, jobs = stores.pool, JobStore(stores.pool)
    cooking = (await shop_order(pool, "confirmed")).order
    await pool.execute(
        "UPDATE orders SET estimated_prep_seconds = 1200 WHERE id = $1::uuid", cooking
    )
    ready = (await shop_order(pool, "ready_for_pickup")).order
    with_courier = (await shop_order(pool, "confirmed", with_courier=True)).order
    pending = (await shop_order(pool, "pending")).order
    handled = (await shop_order(pool, "confirmed")).order
    assert await jobs.ensure(handled, None, 3)
    before = await _job(pool, handled)

    # Orders changed within the quiet period are left to the event path.
    assert not {cooking, ready} & set(await jobs.adopt_missed(5, 600.0, 3600.0, EVERYONE))
    assert await _job(pool, cooking) is None

    adopted = set(await jobs.adopt_missed(5, 600.0, 0.0, EVERYONE))
    assert {cooking, ready} <= adopted
    assert not {with_courier, pending, handled} & adopted
    # Due when the courier should set off: confirmation plus preparation minus the lead.
    job = await _job(pool, cooking)
    assert job is not None and (job["state"], job["attempts"], job["max_attempts"]) == (
        "queued",
        0,
        5,
    )
    assert job["next_attempt_at"] == job["confirmed_at"] + timedelta(seconds=600)
    # Food that is ready: at once.
    job = await _job(pool, ready)
    assert job is not None and job["next_attempt_at"] <= await pool.fetchval("SELECT now()")
    assert await _job(pool, with_courier) is None and await _job(pool, pending) is None
    assert await _job(pool, handled) == before

    # Once adopted, never again.
    assert not {cooking, ready} & set(await jobs.adopt_missed(5, 600.0, 0.0, EVERYONE))
