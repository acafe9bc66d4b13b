"""Order events that start, hurry or stop dispatch, read through a consumer group.

A confirmed order gets a dispatch job timed so that the courier reaches the shop about when the
food is ready: due at confirmation + preparation - ``lead_s`` (the time a courier typically
needs to get there), at once when preparation is shorter than that. An order marked ready
early makes its job due now. A cancelled or rejected order, or one an operator gave a courier,
ends its job and withdraws a pending offer; one whose courier an operator took off starts a
fresh round. The group remembers where it stopped, so a restarted
matching_svc resumes there; every handler is idempotent (events come at least once).

An event can still be lost for good: published, then gone with Redis's data before matching
read it (Redis holds nothing durable), or dead-lettered. :class:`MissedTriggers` looks in
PostgreSQL for orders that wait for a courier without a job and starts their dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, timedelta

from delivery.order.v1 import order_events_pb2
from matching_svc.domain.offers import Offer
from matching_svc.locator import CourierStatus
from matching_svc.store.jobs import JobStore
from matching_svc.store.offers import OfferStore
from mesh.events import Event, parse_payload

logger = logging.getLogger(__name__)

ET = order_events_pb2


class OrderTriggers:
    def __init__(
        self,
        jobs: JobStore,
        offers: OfferStore,
        *,
        max_attempts: int,
        lead_s: float,
        on_closed: Callable[[Offer], Awaitable[None]] | None = None,
        couriers: CourierStatus | None = None,
    ) -> None:
        self._couriers = couriers
        self._jobs = jobs
        self._offers = offers
        self._max_attempts = max_attempts
        self._lead = timedelta(seconds=lead_s)
        self._on_closed = on_closed

    async def handle(self, event: Event) -> None:
        message = order_events_pb2.OrderEvent()
        if not parse_payload(event, message):
            return
        order_id = message.order_id
        kind = message.type
        if kind == ET.ORDER_EVENT_TYPE_CONFIRMED and not message.driver_id:
            due = None
            if message.HasField("confirm_time"):
                prep = message.estimated_prep_duration.ToTimedelta()
                due = message.confirm_time.ToDatetime(tzinfo=UTC) + max(
                    timedelta(0), prep - self._lead
                )
            await self._jobs.ensure(order_id, due, self._max_attempts)
        elif kind == ET.ORDER_EVENT_TYPE_READY_FOR_PICKUP and not message.driver_id:
            await self._jobs.ensure(order_id, None, self._max_attempts)
            await self._jobs.hurry(order_id)
        elif kind in (ET.ORDER_EVENT_TYPE_CANCELLED, ET.ORDER_EVENT_TYPE_REJECTED):
            await self._withdraw(order_id)
            await self._jobs.close(order_id, "cancelled")
        elif kind == ET.ORDER_EVENT_TYPE_COURIER_UNASSIGNED:
            # An operator took the courier off: find another (the one taken off is not asked).
            await self._jobs.ensure(order_id, None, self._max_attempts)
            await self._jobs.reopen(order_id)
        elif kind == ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED:
            # Through an accepted offer (then nothing is pending) or an operator's hand.
            await self._withdraw(order_id)
            await self._jobs.close(order_id, "assigned")
        await self._follow_load(message)

    async def _follow_load(self, message: order_events_pb2.OrderEvent) -> None:
        """A courier's status follows their load (see :class:`CourierStatus`): the courier an
        order came to, and the one it left (reassigned, taken off, delivered, cancelled)."""
        if self._couriers is None:
            return
        kind = message.type
        couriers: list[str] = []
        if kind in (ET.ORDER_EVENT_TYPE_COURIER_ASSIGNED, ET.ORDER_EVENT_TYPE_COURIER_UNASSIGNED):
            couriers = [message.driver_id, message.previous_driver_id]
        elif kind in (ET.ORDER_EVENT_TYPE_DELIVERED, ET.ORDER_EVENT_TYPE_CANCELLED):
            couriers = [message.driver_id]
        for driver_id in dict.fromkeys(d for d in couriers if d):
            await self._couriers.follow(driver_id)

    async def _withdraw(self, order_id: str) -> None:
        for offer in await self._offers.withdraw_for_order(order_id):
            if self._on_closed is not None:
                await self._on_closed(offer)


class MissedTriggers:
    """The worker that starts the dispatch of orders whose confirmation event never came."""

    def __init__(
        self,
        jobs: JobStore,
        *,
        max_attempts: int,
        lead_s: float,
        every_s: float = 5.0,
        quiet_s: float = 10.0,
    ) -> None:
        self._jobs = jobs
        self._max_attempts = max_attempts
        self._lead_s = lead_s
        self._every_s = every_s
        self._quiet_s = quiet_s
        self._stopping = asyncio.Event()
        #: Orders whose job this worker made.
        self.adopted = 0

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                adopted = await self._jobs.adopt_missed(
                    self._max_attempts, self._lead_s, self._quiet_s
                )
            except Exception:
                logger.exception("looking for orders without a dispatch job failed")
            else:
                for order_id in adopted:
                    logger.warning(
                        "order waited for a courier without a dispatch job (its event was lost"
                        " or is late); dispatching it",
                        extra={"order_id": order_id},
                    )
                self.adopted += len(adopted)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every_s)

    def stop(self) -> None:
        self._stopping.set()
