"""Sequential offers end to end: candidates from a real location_svc over gRPC, offers and jobs
in PostgreSQL, couriers in the real geo index (filed straight into Redis: the GPS path has its
own tests)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from location_svc.server import build_server as build_location
from location_svc.store.driver_index import DriverIndex
from location_svc.store.geo_index import IndexEntry
from matching_svc.dispatcher import Dispatcher, DispatchRules
from matching_svc.domain.offers import OfferStatus
from matching_svc.domain.scoring import Candidate, rank
from matching_svc.domain.stacking import StackingRules
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
    index: DriverIndex
    offers: OfferStore
    jobs: JobStore
    dispatcher: Dispatcher
    shop: tuple[float, float]
    filed: list[tuple[str, str]]

    def north(self, metres: float) -> tuple[float, float]:
        return self.shop[0] + math.degrees(metres / EARTH_RADIUS_M), self.shop[1]

    async def courier_at(
        self, metres_north: float, rating: float | None = None, *, busy: bool = False
    ) -> str:
        """A courier, available (or busy) ``metres_north`` of the shop."""
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
        slot = self.index.queue_upsert(pipe, entry, None, busy=busy)
        await pipe.execute()
        self.filed.append((driver, slot))
        return driver

    async def order(self, door_north: float = 2_000.0) -> str:
        made = await shop_order(self.pool, "confirmed", shop=self.shop, door=self.north(door_north))
        await self.jobs.ensure(made.order, None, self.dispatcher.rules.max_attempts)
        return made.order

    async def carrying(self, driver: str, door_north: float) -> str:
        """Gives the courier an order from another shop nearby, picked up, for a door this far
        north of the shop; returns the order."""
        made = await shop_order(
            self.pool, "picked_up", shop=self.north(-300), door=self.north(door_north)
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE orders SET driver_id = $2::uuid, assigned_at = now() WHERE id = $1::uuid",
                made.order,
                driver,
            )
            await conn.execute(
                "UPDATE drivers SET active_order_count = active_order_count + 1"
                " WHERE id = $1::uuid",
                driver,
            )
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
            DriverIndex(stores.redis),
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
            for driver, slot in made.filed:
                made.index.queue_remove(pipe, driver, slot)
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


async def test_a_courier_with_an_order_on_the_way_is_offered_a_second_one_stacked(rig: Rig) -> None:
    # Two hundred metres from the shop with an order in the bag for a door 3 km north; the new
    # order goes 3.2 km north: on the way, and the first customer waits under two minutes more.
    loaded = await rig.courier_at(200, busy=True)
    first = await rig.carrying(loaded, 3_000)
    idle = await rig.courier_at(1_500)
    order = await rig.order(door_north=3_200)
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == loaded and offer.stacked
    # What the stack costs is recorded beside the score (not weighed).
    detour, detour_weight = offer.factors["stack_detour"]
    delay, delay_weight = offer.factors["stack_delay"]
    assert detour_weight == delay_weight == 0.0
    assert detour == pytest.approx(1.0)
    assert 0.5 < delay < 1.0
    assert offer.factors["load"][0] == pytest.approx(1 - 1 / 3, abs=1e-6)

    # Accepting it: the courier carries two, and both customers hear of the other drop.
    _, assigned = await rig.offers.accept(offer.offer_id, loaded)
    assert assigned.driver_id == loaded
    load = await rig.pool.fetchval(
        "SELECT active_order_count FROM drivers WHERE id = $1::uuid", loaded
    )
    assert load == 2
    told = await rig.pool.fetch(
        "SELECT order_id::text, recipient_id::text FROM notifications"
        " WHERE type = 'courier_has_another_drop' AND order_id = ANY($1::uuid[])",
        [first, order],
    )
    customers = await rig.pool.fetch(
        "SELECT id::text AS order_id, customer_id::text FROM orders WHERE id = ANY($1::uuid[])",
        [first, order],
    )
    assert sorted(tuple(r) for r in told) == sorted(tuple(r) for r in customers)
    offered_idle = await rig.pool.fetchval(
        "SELECT count(*) FROM driver_offers WHERE driver_id = $1::uuid", idle
    )
    assert offered_idle == 0  # never asked


async def test_couriers_the_order_does_not_fit_are_passed_over(rig: Rig) -> None:
    # Nearest: carrying an order 3 km north while this one goes 3 km south (the first customer
    # would wait far too long, or the detour would be); then one at their cap. The idle
    # courier further out gets the offer, unstacked.
    wrong_way = await rig.courier_at(100)
    await rig.carrying(wrong_way, 3_000)
    full = await rig.courier_at(200)
    await rig.carrying(full, 500)
    await rig.carrying(full, 600)
    idle = await rig.courier_at(1_500)
    order = await rig.order(door_north=-3_000)
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == idle and not offer.stacked
    assert "stack_detour" not in offer.factors


async def test_with_stacking_off_a_loaded_courier_is_never_offered(rig: Rig) -> None:
    rig.dispatcher.rules = replace(rig.dispatcher.rules, stacking=StackingRules(enabled=False))
    loaded = await rig.courier_at(100)
    await rig.carrying(loaded, 3_000)
    order = await rig.order(door_north=3_100)
    assert await rig.dispatcher.step(order) is None
    job = await rig.jobs.context(order)
    assert job is not None and job.state == "waiting_for_retry"


async def test_busy_couriers_never_crowd_available_ones_out_of_the_search(rig: Rig) -> None:
    # Three couriers at their cap stand right at the shop; the search takes two candidates.
    # The available courier further out must still be found (and get the offer).
    rig.dispatcher.rules = replace(rig.dispatcher.rules, candidates=2)
    for metres in (10, 20, 30):
        full = await rig.courier_at(metres, busy=True)
        await rig.carrying(full, 500)
        await rig.carrying(full, 600)
    idle = await rig.courier_at(1_200)
    order = await rig.order(door_north=1_000)
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == idle


async def test_a_courier_shown_busy_who_carries_nothing_is_offered_like_anyone(rig: Rig) -> None:
    # Their status update after the last delivery went astray: judged by load, not by flag.
    stale = await rig.courier_at(100, busy=True)
    await rig.courier_at(900)
    order = await rig.order()
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == stale and not offer.stacked


async def test_a_stack_waits_for_the_food_so_a_far_from_ready_order_is_not_stacked(
    rig: Rig,
) -> None:
    # The on-the-way stack of the first stacking test, but the shop needs half an hour more:
    # the courier would wait there with the first customer's order in the bag.
    loaded = await rig.courier_at(200, busy=True)
    await rig.carrying(loaded, 3_000)
    idle = await rig.courier_at(1_500)
    made_at = time.monotonic()
    order = await rig.order(door_north=3_200)
    await rig.pool.execute(
        "UPDATE orders SET estimated_prep_seconds = 1800 WHERE id = $1::uuid", order
    )
    job = await rig.jobs.context(order)
    # Confirmed when made, with half an hour to go: whatever time passed since is gone.
    assert job is not None and 1_800 - (time.monotonic() - made_at) <= job.ready_in_s <= 1_800
    offer = await rig.dispatcher.step(order)
    assert offer is not None and offer.driver_id == idle and not offer.stacked
