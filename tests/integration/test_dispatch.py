"""Sequential offers end to end: candidates from a real location_svc over gRPC, offers and jobs
in PostgreSQL, couriers in the real geo index (filed straight into Redis: the GPS path has its
own tests)."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from location_svc.server import build_server as build_location
from location_svc.store.geo_index import GeoIndex, IndexEntry, shard_of
from matching_svc.dispatcher import Dispatcher, DispatchRules
from matching_svc.domain.offers import OfferStatus
from matching_svc.domain.scoring import Candidate, rank
from matching_svc.locator import LocationLocator
from matching_svc.store.jobs import JobStore
from matching_svc.store.offers import OfferStore
from mesh import clock
from mesh.breaker import CircuitBreaker
from mesh.geo import EARTH_RADIUS_M
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import service_metadata, serving, settings_for_test
from order_svc.changes import assign_courier_in
from order_svc.store.orders import OrderStore
from tests.integration.rows import courier, shop_order


@dataclass
class Rig:
    pool: asyncpg.Pool
    redis: Redis
    index: GeoIndex
    offers: OfferStore
    jobs: JobStore
    dispatcher: Dispatcher
    shop: tuple[float, float]
    filed: list[tuple[str, str]]

    async def courier_at(self, metres_north: float, rating: float | None = None) -> str:
        """A courier, available ``metres_north`` of the shop."""
        async with self.pool.acquire() as conn:
            driver = await courier(conn)
            if rating is not None:
                await conn.execute(
                    "UPDATE drivers SET rating_avg = $2, rating_count = 1 WHERE id = $1::uuid",
                    driver,
                    rating,
                )
        lat = self.shop[0] + math.degrees(metres_north / EARTH_RADIUS_M)
        entry = IndexEntry(driver, lat, self.shop[1], "bicycle", clock.now_ms())
        pipe = self.redis.pipeline(transaction=False)
        self.index.queue_upsert(pipe, entry, None)
        await pipe.execute()
        self.filed.append((driver, shard_of(lat, self.shop[1])))
        return driver

    async def order(self) -> str:
        made = await shop_order(self.pool, "confirmed", shop=self.shop)
        await self.jobs.ensure(made.order, None, self.dispatcher.rules.max_attempts)
        return made.order


@pytest.fixture
async def rig(store_settings: StoreSettings, stores: Stores) -> AsyncIterator[Rig]:
    assert stores.pool is not None and stores.redis is not None
    settings = settings_for_test("location", store_settings)
    async with serving(build_location, settings, stores) as (_, channel):
        locator = LocationLocator(
            channel, service_metadata(settings), CircuitBreaker("location_svc")
        )
        offers, jobs = OfferStore(stores.pool, OrderStore(stores.pool)), JobStore(stores.pool)
        rules = DispatchRules(offer_ttl_s=0.5, radii_m=(2_000.0, 5_000.0))
        made = Rig(
            stores.pool,
            stores.redis,
            GeoIndex(stores.redis),
            offers,
            jobs,
            Dispatcher(stores.pool, offers, jobs, locator, rules),
            # Somewhere nobody else's test drivers are.
            (random.uniform(-50, 50), random.uniform(-170, 170)),
            [],
        )
        try:
            yield made
        finally:
            pipe = stores.redis.pipeline(transaction=False)
            for driver, shard in made.filed:
                made.index.queue_remove(pipe, driver, shard)
            await pipe.execute()


async def test_the_best_scored_courier_gets_the_offer_with_its_factors(rig: Rig) -> None:
    near_but_poorly_rated = await rig.courier_at(300, rating=3.0)
    farther_and_excellent = await rig.courier_at(800, rating=5.0)
    await rig.courier_at(1_500)
    order = await rig.order()
    # What the scoring says about these three (nearest first is not the answer).
    expected = rank(
        [
            Candidate(near_but_poorly_rated, 300, 3.0, 0, 0, 0),
            Candidate(farther_and_excellent, 800, 5.0, 0, 0, 0),
        ],
        2_000.0,
    )[0]
    assert expected.driver_id == farther_and_excellent
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == farther_and_excellent
    assert offer.attempt == 1 and offer.score == pytest.approx(expected.total, abs=1e-3)
    stored = await rig.offers.get(offer.offer_id)
    assert stored is not None
    assert stored.factors["rating"] == pytest.approx((1.0, 0.25))
    assert stored.factors["distance"][0] == pytest.approx(1 - 800 / 2_000, abs=1e-3)
    assert set(stored.factors) == {"distance", "rating", "acceptance", "load"}
    job = await rig.jobs.context(order)
    assert job is not None and (job.state, job.attempts) == ("offered", 1)


async def test_couriers_who_declined_or_let_it_expire_are_not_asked_again(rig: Rig) -> None:
    first = await rig.courier_at(200)
    second = await rig.courier_at(600)
    third = await rig.courier_at(1_200)
    order = await rig.order()
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == first
    await rig.offers.decline(offer.offer_id, first, "too_far")
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == second and offer.attempt == 2
    # The second lets it expire; the sweep hands the order on.
    await asyncio.sleep(0.6)
    made = [o for o in await rig.dispatcher.run_once() if o.order_id == order]
    assert [o.driver_id for o in made] == [third]
    assert (await rig.offers.get(offer.offer_id)).status is OfferStatus.EXPIRED  # type: ignore[union-attr]
    offered = await rig.pool.fetch(
        "SELECT driver_id::text, attempt FROM driver_offers WHERE order_id = $1::uuid"
        " ORDER BY attempt",
        order,
    )
    assert [(r["driver_id"], r["attempt"]) for r in offered] == [
        (first, 1),
        (second, 2),
        (third, 3),
    ]


async def test_after_five_refusals_the_customer_is_told_and_the_order_waits(rig: Rig) -> None:
    couriers = [await rig.courier_at(100 * (i + 1)) for i in range(6)]
    order = await rig.order()
    for expected in couriers[:5]:
        offer = await rig.dispatcher.step(order)
        assert offer is not None and offer.driver_id == expected
        await rig.offers.decline(offer.offer_id, expected, None)
    # A sixth courier is there, but the round is over.
    assert await rig.dispatcher.step(order) is None
    job = await rig.jobs.context(order)
    assert job is not None and (job.state, job.attempts) == ("waiting_for_retry", 0)
    notes = await rig.pool.fetch(
        "SELECT recipient_id::text, type FROM notifications WHERE order_id = $1::uuid", order
    )
    customer = await rig.pool.fetchval(
        "SELECT customer_id::text FROM orders WHERE id = $1::uuid", order
    )
    assert [(n["recipient_id"], n["type"]) for n in notes] == [(customer, "no_courier_available")]
    count = await rig.pool.fetchval(
        "SELECT count(*) FROM driver_offers WHERE order_id = $1::uuid", order
    )
    assert count == 5


async def test_an_order_an_operator_gave_a_courier_closes_its_job_without_an_offer(
    rig: Rig,
) -> None:
    await rig.courier_at(150)
    other = await rig.courier_at(300)
    order = await rig.order()
    async with rig.pool.acquire() as conn, conn.transaction():
        await assign_courier_in(
            conn, OrderStore(rig.pool), order, other, reason="operator", now=datetime.now(UTC)
        )
    assert await rig.dispatcher.step(order) is None
    job = await rig.jobs.context(order)
    assert job is not None and job.state == "assigned"
    assert await rig.offers.for_order(order) == []


async def test_one_step_at_a_time_per_order(rig: Rig) -> None:
    """A decline's own step and the loop's race; exactly one makes the next offer."""
    first = await rig.courier_at(100)
    await rig.courier_at(400)
    await rig.courier_at(700)
    order = await rig.order()
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == first
    await rig.offers.decline(offer.offer_id, first, None)
    await asyncio.gather(
        rig.dispatcher.step(order), rig.dispatcher.run_once(), rig.dispatcher.step(order)
    )
    offers = await rig.offers.for_order(order)
    assert [(o.attempt, o.status) for o in offers] == [
        (1, OfferStatus.DECLINED),
        (2, OfferStatus.PENDING),
    ]
    job = await rig.jobs.context(order)
    assert job is not None and (job.state, job.attempts) == ("offered", 2)


async def test_a_dispatch_asked_for_before_confirmation_waits_for_it(rig: Rig) -> None:
    driver = await rig.courier_at(200)
    order = (await shop_order(rig.pool, "pending", shop=rig.shop)).order
    await rig.jobs.ensure(order, None, rig.dispatcher.rules.max_attempts)
    assert await rig.dispatcher.step(order) is None
    job = await rig.jobs.context(order)
    assert job is not None and job.state == "waiting_for_retry"
    await rig.pool.execute(
        "UPDATE orders SET status = 'confirmed', confirmed_at = now() WHERE id = $1::uuid", order
    )
    await rig.jobs.due_now(order)
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == driver


async def test_an_order_whose_courier_was_taken_off_goes_to_someone_else(rig: Rig) -> None:
    first = await rig.courier_at(100)
    second = await rig.courier_at(500)
    order = await rig.order()
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == first
    await rig.offers.accept(offer.offer_id, first)
    # An operator takes the courier off (order_svc's ReassignOrder with nobody); the order's
    # COURIER_UNASSIGNED event reopens the job.
    await rig.pool.execute("UPDATE orders SET driver_id = NULL WHERE id = $1::uuid", order)
    await rig.jobs.reopen(order)
    again = await rig.dispatcher.step(order)
    assert again is not None and again.driver_id == second and again.attempt == 1
