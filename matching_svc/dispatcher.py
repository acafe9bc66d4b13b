"""Sequential offers: find the best courier near the shop, offer, and on a refusal the next.

One :meth:`Dispatcher.step` makes one offer for one order (or, finding nobody, schedules the next
search): candidates come from location_svc's FindNearbyDrivers (busy couriers included),
through a circuit breaker, widening the radius in steps until someone is there; couriers who
declined or let this order's offer expire are left out, as are those at their cap and those
carrying orders this one does not fit (:mod:`matching_svc.domain.stacking`); the rest are scored
(:mod:`matching_svc.domain.scoring`) and the best who holds no other pending offer gets this
one. The offer and the job's new state are one transaction. After ``max_attempts`` offers (or
empty searches) without an accept, the customer is told no courier is available and the job
waits ``retry_after_s`` for another round (or for an operator).

Everything lives in PostgreSQL, so :meth:`run_once` (expire the offers whose time is up, then
step their orders and every due job) resumes after a crash exactly where the last run stopped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import grpc

from matching_svc.domain.offers import Offer
from matching_svc.domain.scoring import Candidate, Score, ScoringRules, rank
from matching_svc.domain.stacking import StackingRules, StackPlan, plan_stack
from matching_svc.store.jobs import ASSIGNABLE_STATUSES, JobContext, JobStore
from matching_svc.store.offers import OfferStore
from mesh.breaker import BreakerOpen
from mesh.errors import FailedPrecondition

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Nearby:
    driver_id: str
    distance_m: float
    lat: float
    lng: float
    #: Busy (on a delivery) rather than available.
    busy: bool = False


class Locator(Protocol):
    """Where couriers are: location_svc's FindNearbyDrivers."""

    async def nearby(
        self, lat: float, lng: float, radius_m: float, limit: int, *, include_busy: bool = False
    ) -> list[Nearby]: ...


@dataclass(frozen=True, slots=True)
class DispatchRules:
    #: How long a courier has to answer, in seconds.
    offer_ttl_s: float = 30.0
    #: Offers (or empty searches) per round before the customer is told nobody is available.
    max_attempts: int = 5
    #: The search radii around the shop, tried in turn until someone is found.
    radii_m: tuple[float, ...] = (2_000.0, 5_000.0, 10_000.0)
    #: How many of the nearest couriers are scored.
    candidates: int = 20
    #: After an empty search, the next one in this many seconds.
    search_again_s: float = 10.0
    #: After a round without an accept, the next round in this many seconds.
    retry_after_s: float = 120.0
    #: How long a courier typically needs to reach the shop, in seconds: dispatch starts this
    #: long before the food is expected to be ready (at once if preparation is shorter).
    lead_s: float = 600.0
    #: How long a step may hold an order's job before another may take it over, in seconds
    #: (a step that died; a live one takes a candidate search and a transaction).
    lease_s: float = 30.0
    #: The window over which acceptance rates count, in seconds.
    stats_window_s: float = 24 * 3600.0
    scoring: ScoringRules = field(default_factory=ScoringRules)
    #: When a courier carrying orders may be offered another.
    stacking: StackingRules = field(default_factory=StackingRules)


NO_COURIER_TITLE = "Looking for a courier"
NO_COURIER_BODY = "No courier is available right now; we keep looking."


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        offers: OfferStore,
        jobs: JobStore,
        locator: Locator,
        rules: DispatchRules | None = None,
        *,
        on_offer: Callable[[Offer], Awaitable[None]] | None = None,
        on_closed: Callable[[Offer], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._offers = offers
        self._jobs = jobs
        self._locator = locator
        self.rules = rules or DispatchRules()
        self._on_offer = on_offer
        self._on_closed = on_closed
        self._weights = self.rules.scoring.weights.normalised()
        #: Names this dispatcher in job leases.
        self._owner = f"dispatcher-{uuid.uuid4().hex[:12]}"

    async def step(self, order_id: str) -> Offer | None:
        """Makes the order's next offer, or schedules its next search; returns the offer.

        One step per order at a time: the step leases the job first (a decline's step and the
        loop's may both try; one gets it, the other returns None).
        """
        if not await self._jobs.take(order_id, self._owner, self.rules.lease_s):
            return None
        try:
            return await self._step(order_id)
        finally:
            await self._jobs.release(order_id, self._owner)

    async def _step(self, order_id: str) -> Offer | None:
        ctx = await self._jobs.context(order_id)
        if ctx is None:
            return None
        if not ctx.dispatchable:
            if ctx.driver_id:
                await self._jobs.close(order_id, "assigned")
            elif ctx.order_status == "pending":
                # Asked for before the merchant confirmed: look again in a while.
                await self._jobs.search_again(
                    order_id, ctx.attempts, self.rules.search_again_s, "order not confirmed"
                )
            else:
                await self._jobs.close(order_id, "cancelled")
            return None
        if ctx.attempts >= ctx.max_attempts:
            await self._jobs.give_up_round(
                ctx, self.rules.retry_after_s, NO_COURIER_TITLE, NO_COURIER_BODY
            )
            return None
        try:
            ranked, plans, radius = await self._candidates(ctx)
        except BreakerOpen as exc:
            # location_svc is down: the order waits, it does not fail (nor count an attempt).
            await self._jobs.search_again(order_id, ctx.attempts, exc.retry_after_s, str(exc))
            return None
        except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            # A failed search (the breaker counts it): again soon, no attempt spent.
            logger.warning("candidate search for order %s failed: %s", order_id, exc)
            await self._jobs.search_again(
                order_id, ctx.attempts, self.rules.search_again_s, f"search failed: {exc}"
            )
            return None
        attempt = ctx.attempts + 1
        for choice in ranked:
            factors = {
                name: (value, weight)
                for name, value, weight in zip(
                    ("distance", "rating", "acceptance", "load"),
                    (choice.distance, choice.rating, choice.acceptance, choice.load),
                    self._weights,
                    strict=True,
                )
            }
            plan = plans.get(choice.driver_id)
            if plan is not None:
                factors.update(self._stack_factors(plan))
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    # The order may not change under the offer (a cancel or an operator's
                    # courier waits for this transaction, or this one sees theirs).
                    order = await conn.fetchrow(
                        "SELECT status, driver_id FROM orders WHERE id = $1::uuid FOR SHARE",
                        order_id,
                    )
                    if (
                        order is None
                        or order["driver_id"]
                        or order["status"] not in ASSIGNABLE_STATUSES
                    ):
                        return None  # the next step closes the job
                    offer = await self._offers.create(
                        order_id,
                        choice.driver_id,
                        attempt=attempt,
                        ttl_s=self.rules.offer_ttl_s,
                        score=choice.total,
                        factors=factors,
                        stacked=plan is not None,
                        conn=conn,
                    )
                    await self._jobs.offered(conn, order_id, attempt)
            except FailedPrecondition as exc:
                if exc.reason == "DRIVER_HAS_PENDING_OFFER":
                    continue  # another order waits on this courier: the next best
                if exc.reason == "ORDER_HAS_PENDING_OFFER":
                    return None  # another step got there first
                raise
            await self._tell(self._on_offer, offer)
            return offer
        # Nobody near, or everyone near busy with another offer or at their cap.
        if attempt >= ctx.max_attempts:
            await self._jobs.give_up_round(
                ctx, self.rules.retry_after_s, NO_COURIER_TITLE, NO_COURIER_BODY
            )
        else:
            await self._jobs.search_again(
                order_id, attempt, self.rules.search_again_s, f"no courier within {radius:.0f} m"
            )
        return None

    async def run_once(self, limit: int = 100) -> list[Offer]:
        """Expires offers whose time is up and steps their orders, then every takeable job.

        Each order on its own: one that fails is logged and left for the next round.
        """
        made: list[Offer] = []
        expired = await self._offers.expire_due(limit)
        for lapsed in expired:
            await self._tell(self._on_closed, lapsed)
        orders = dict.fromkeys([o.order_id for o in expired] + await self._jobs.due(limit))
        for order_id in orders:
            try:
                offer = await self.step(order_id)
            except Exception:
                logger.exception("a dispatch step for order %s failed", order_id)
                continue
            if offer is not None:
                made.append(offer)
        return made

    async def _tell(self, hook: Callable[[Offer], Awaitable[None]] | None, offer: Offer) -> None:
        """Tells a courier's stream; the offer stands whether or not the message gets there
        (a reconnecting app reads its pending offer again)."""
        if hook is None:
            return
        try:
            await hook(offer)
        except Exception as exc:
            logger.warning(
                "could not tell courier %s about offer %s: %s", offer.driver_id, offer.offer_id, exc
            )

    async def _nearby(
        self, ctx: JobContext, radius: float, limit: int, *, busy: bool
    ) -> list[Nearby]:
        """The nearest couriers to the shop: the available ones, and with ``busy`` the nearest
        of all besides, in two searches, so that busy couriers (often at their cap, or going
        the wrong way) never crowd available ones out of the answer."""
        at = (ctx.pickup_lat, ctx.pickup_lng)
        if not busy:
            return await self._locator.nearby(*at, radius, limit)
        free, both = await asyncio.gather(
            self._locator.nearby(*at, radius, limit),
            self._locator.nearby(*at, radius, limit, include_busy=True),
        )
        merged = {n.driver_id: n for n in free}
        merged.update((n.driver_id, n) for n in both)
        return sorted(merged.values(), key=lambda n: (n.distance_m, n.driver_id))

    def _stack_factors(self, plan: StackPlan) -> dict[str, tuple[float, float]]:
        """What a stacked offer costs, for operators (recorded beside the score, not weighed:
        0 is the bound, 1 nothing at all)."""
        rules = self.rules.stacking
        worst = max(plan.delays_s.values(), default=0.0)
        return {
            "stack_detour": (_share_left(plan.detour_s, rules.max_detour_s), 0.0),
            "stack_delay": (_share_left(worst, rules.max_delay_s), 0.0),
        }

    async def _candidates(self, ctx: JobContext) -> tuple[list[Score], dict[str, StackPlan], float]:
        """The scored couriers near the shop (best first), the stacking plan of each who carries
        orders, and the radius they were found in.

        The radius widens until someone is left after the filters: couriers who answered this
        order before (declined, let it expire, or accepted and were taken off), couriers at
        their cap, couriers holding another pending offer, and couriers carrying orders that
        this one does not fit (:mod:`.domain.stacking`). A courier is judged by their load,
        not by their status: one shown busy who carries nothing (a status update that went
        astray) is a courier like any other.
        """
        left_out = await self._offers.answered_by(ctx.order_id)
        stacking = self.rules.stacking
        radius = self.rules.radii_m[-1]
        limit = self.rules.candidates + len(left_out)
        for radius in self.rules.radii_m:
            found = [
                n
                for n in await self._nearby(ctx, radius, limit, busy=stacking.enabled)
                if n.driver_id not in left_out
            ]
            if not found:
                continue
            stats = await self._offers.stats(
                [n.driver_id for n in found], self.rules.stats_window_s
            )
            free = {
                n.driver_id: s
                for n in found
                if (s := stats.get(n.driver_id)) is not None
                and s.active_orders < s.max_active_orders
                and not s.has_pending_offer
            }
            loaded = [n for n in found if n.driver_id in free and free[n.driver_id].active_orders]
            carried = await self._offers.carried([n.driver_id for n in loaded]) if loaded else {}
            plans: dict[str, StackPlan] = {}
            candidates = []
            for n in found:
                s = free.get(n.driver_id)
                if s is None:
                    continue
                if s.active_orders:
                    if not stacking.enabled:
                        continue
                    plan = plan_stack(
                        (n.lat, n.lng),
                        carried.get(n.driver_id, []),
                        ctx.order_id,
                        (ctx.pickup_lat, ctx.pickup_lng),
                        (ctx.dropoff_lat, ctx.dropoff_lng),
                        stacking,
                        ready_s=ctx.ready_in_s,
                    )
                    if plan is None:
                        continue
                    plans[n.driver_id] = plan
                candidates.append(
                    Candidate(
                        driver_id=n.driver_id,
                        distance_m=n.distance_m,
                        rating=s.rating,
                        offers_in_window=s.answered,
                        accepted_in_window=s.accepted,
                        active_orders=s.active_orders,
                    )
                )
            if candidates:
                return rank(candidates, radius, self.rules.scoring), plans, radius
        return [], {}, radius


def _share_left(used: float, bound: float) -> float:
    """How much of ``bound`` is left after ``used``, from 0 to 1."""
    if bound <= 0:
        return 1.0 if used <= 0 else 0.0
    return min(1.0, max(0.0, 1.0 - used / bound))
