"""TrackingService: thin handlers over the live hub, the notification feed, the estimate and the
route planner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2, tracking_service_pb2_grpc
from mesh.auth import Principal, Role, current_principal
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from mesh.ids import canonical_uuid
from tracking_svc.domain.eta import FINAL
from tracking_svc.live import SEQ_SHIFT, OrderFeed, TrackingHub, Watcher, eta_proto, notice
from tracking_svc.store.log import TrackingLog

logger = logging.getLogger(__name__)


def _order_id(value: str) -> str:
    order_id = canonical_uuid(value)
    if order_id is None:
        raise InvalidArgument(FieldViolation("order_id", "must be an order id (a UUID)"))
    return order_id


def _not_found(order_id: str) -> NotFound:
    return NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND")


class TrackingService(tracking_service_pb2_grpc.TrackingServiceServicer):
    """The handlers; the work happens in the hub, the notification feed and the domain."""

    def __init__(self, hub: TrackingHub, log: TrackingLog, notifications: Any, planner: Any):
        self._hub = hub
        self._log = log
        self._notifications = notifications
        self._planner = planner

    async def _feed(self, order_id: str, principal: Principal) -> OrderFeed:
        feed = await self._hub.feed(order_id)
        if feed is None or not feed.may_watch(principal):
            raise _not_found(order_id)
        return feed

    async def TrackOrder(
        self,
        request: tracking_service_pb2.TrackOrderRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tracking_service_pb2.TrackOrderResponse]:
        principal = current_principal()
        order_id = _order_id(request.order_id)
        feed = await self._feed(order_id, principal)
        watcher = Watcher(principal, self._hub.rules)
        resume = request.resume_after_sequence
        feed.attach(watcher)
        try:
            if resume and await self._replay(feed, watcher, resume):
                feed.current(watcher)
            else:
                if resume:
                    yield self._resync(feed, watcher)
                feed.snapshot(watcher)
            if feed.facts.status in FINAL:
                watcher.end()
            while True:
                if watcher.overflowed:
                    # Too far behind to catch up update by update: start again from now.
                    watcher.overflowed = False
                    yield self._resync(feed, watcher)
                    feed.snapshot(watcher)
                watcher.wake.clear()
                # Whether it ended before this take: an update queued while the ones taken were
                # being sent (the final status, say) is sent before the stream ends.
                ended = watcher.ended
                updates, wait = watcher.take()
                for update in updates:
                    yield update
                if ended and wait is None:
                    if watcher.error is not None:
                        raise watcher.error
                    return
                if wait is not None:
                    # A timer that sets the event, not a wait_for: no task per wake-up.
                    timer = asyncio.get_running_loop().call_later(wait, watcher.wake.set)
                    try:
                        await watcher.wake.wait()
                    finally:
                        timer.cancel()
                elif not watcher.wake.is_set():
                    await watcher.wake.wait()
        finally:
            feed.detach(watcher)

    async def _replay(self, feed: OrderFeed, watcher: Watcher, resume: int) -> bool:
        """Queues every logged update after ``resume``; False if they are no longer kept."""
        wanted = resume >> SEQ_SHIFT
        state = await self._log.state(feed.order_id)
        head = max(feed.seq, state.seq if state else 0)
        if wanted > head:
            raise InvalidArgument(
                FieldViolation(
                    "resume_after_sequence",
                    f"is ahead of the order's stream (its newest sequence is {head << SEQ_SHIFT})",
                )
            )
        if state is None or wanted < state.base:
            return False
        entries = await self._log.after(feed.order_id, wanted)
        oldest = entries[0].seq if entries else None
        if oldest is not None and oldest > wanted + 1 and wanted < head:
            # Entries between the resume point and the oldest kept one were trimmed.
            return False
        watcher.last_sent = max(watcher.last_sent, resume)
        watcher.replay([(e.seq, e.payload) for e in entries])
        return True

    def _resync(self, feed: OrderFeed, watcher: Watcher) -> tracking_service_pb2.TrackOrderResponse:
        update = notice(tracking_pb2.TRACKING_NOTICE_TYPE_RESYNC)
        update.sequence = max(watcher.last_sent + 1, (feed.seq << SEQ_SHIFT) - 1)
        watcher.reset(update.sequence)
        return update

    async def StreamNotifications(
        self,
        request: tracking_service_pb2.StreamNotificationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tracking_service_pb2.StreamNotificationsResponse]:
        principal = current_principal()
        principal.require(Role.CUSTOMER, Role.DRIVER, Role.MERCHANT, Role.ADMIN)
        async for response in self._notifications.stream(
            principal.subject, request.resume_after_sequence
        ):
            yield response

    async def GetEta(
        self, request: tracking_service_pb2.GetEtaRequest, context: grpc.aio.ServicerContext
    ) -> tracking_service_pb2.GetEtaResponse:
        principal = current_principal()
        order_id = _order_id(request.order_id)
        feed = await self._hub.feed(order_id)
        if feed is None or not (principal.is_service or feed.may_watch(principal)):
            raise _not_found(order_id)
        if feed.facts.status in FINAL:
            raise FailedPrecondition(
                f"order {order_id} is {feed.facts.status}: there is nothing left to estimate",
                reason="ORDER_FINAL",
                metadata={"status": feed.facts.status},
            )
        await feed.courier_known()
        estimate = feed.compute_estimate()
        assert estimate is not None
        return tracking_service_pb2.GetEtaResponse(eta=eta_proto(estimate))

    async def PlanRoute(
        self, request: tracking_service_pb2.PlanRouteRequest, context: grpc.aio.ServicerContext
    ) -> tracking_service_pb2.PlanRouteResponse:
        current_principal().require(Role.DRIVER, Role.SERVICE, Role.ADMIN)
        return await self._planner.plan(request)
