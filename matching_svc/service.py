"""MatchingService over gRPC: offers to couriers' streams, their answers, dispatch status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import grpc
from google.protobuf import timestamp_pb2
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from delivery.matching.v1 import matching_pb2, matching_service_pb2, matching_service_pb2_grpc
from matching_svc.dispatcher import Dispatcher
from matching_svc.domain.offers import Offer, OfferStatus
from matching_svc.store.jobs import JobStore
from matching_svc.store.offers import OfferStore
from mesh.auth import Role, current_principal
from mesh.breaker import BreakerState, CircuitBreaker
from mesh.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from mesh.ids import canonical_uuid
from mesh.pubsub import Listener

logger = logging.getLogger(__name__)

#: Redis pub/sub channel of one courier's offer events: "<offer id>" for a new offer,
#: "closed:<offer id>" for one that is no longer open.
OFFER_CHANNEL = "offers:{}"
_CLOSED = "closed:"
# Put in every stream's queue when the hub's subscription came back after a loss: whatever
# was published meanwhile never arrived, so the streams read their state again.
_RESYNC = "resync"

_STATUS = {
    OfferStatus.PENDING: matching_pb2.OFFER_STATUS_PENDING,
    OfferStatus.ACCEPTED: matching_pb2.OFFER_STATUS_ACCEPTED,
    OfferStatus.DECLINED: matching_pb2.OFFER_STATUS_DECLINED,
    OfferStatus.EXPIRED: matching_pb2.OFFER_STATUS_EXPIRED,
    OfferStatus.WITHDRAWN: matching_pb2.OFFER_STATUS_WITHDRAWN,
}
_STATES = {
    "queued": matching_pb2.DISPATCH_STATE_QUEUED,
    "searching": matching_pb2.DISPATCH_STATE_SEARCHING,
    "offered": matching_pb2.DISPATCH_STATE_OFFERED,
    "assigned": matching_pb2.DISPATCH_STATE_ASSIGNED,
    "waiting_for_retry": matching_pb2.DISPATCH_STATE_WAITING_FOR_RETRY,
    "exhausted": matching_pb2.DISPATCH_STATE_EXHAUSTED,
    "cancelled": matching_pb2.DISPATCH_STATE_CANCELLED,
}
_BREAKER = {
    BreakerState.CLOSED: matching_pb2.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: matching_pb2.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: matching_pb2.BREAKER_STATE_HALF_OPEN,
}
_DECLINE_REASONS = {
    value: name.removeprefix("DECLINE_REASON_").lower()
    for name, value in matching_pb2.DeclineReason.items()
    if value
}


def _ts(value: object) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def offer_to_proto(offer: Offer, *, operator: bool) -> matching_pb2.Offer:
    """The offer as a courier sees it; scores and their terms only for operators."""
    message = matching_pb2.Offer(
        offer_id=offer.offer_id,
        order_id=offer.order_id,
        driver_id=offer.driver_id,
        status=_STATUS[offer.status],
        attempt=offer.attempt,
        stacked=offer.stacked,
        offer_time=_ts(offer.offered_at),
        expire_time=_ts(offer.expires_at),
        respond_time=_ts(offer.responded_at),
    )
    if operator:
        message.score = offer.score or 0.0
        for name, (value, weight) in offer.factors.items():
            message.factors.add(name=name, value=value, weight=weight)
    return message


def _offer_id(value: str) -> str:
    canonical = canonical_uuid(value)
    if canonical is None:
        raise InvalidArgument(FieldViolation("offer_id", "must be an offer id (a UUID)"))
    return canonical


class OfferPush:
    """Tells a courier's open StreamOffers (on any matching instance) about a new offer."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def offered(self, offer: Offer) -> None:
        await self._redis.publish(OFFER_CHANNEL.format(offer.driver_id), offer.offer_id)

    async def closed(self, offer: Offer) -> None:
        await self._redis.publish(OFFER_CHANNEL.format(offer.driver_id), _CLOSED + offer.offer_id)


class OfferHub:
    """One Redis subscription per process for every courier's offer events, fanned out to the
    couriers' open StreamOffers here (a subscription per stream would hold a Redis connection
    for each of thousands of couriers)."""

    def __init__(self, redis: Redis) -> None:
        self._streams: dict[str, set[asyncio.Queue[str]]] = {}
        self._listener = Listener(
            redis,
            self._heard,
            patterns=[OFFER_CHANNEL.format("*")],
            on_subscribed=self._subscribed,
            name="offer subscription",
        )
        #: Set once subscribed: events published from then on reach the streams.
        self.ready = self._listener.ready
        self.run = self._listener.run
        self.stop = self._listener.stop

    @contextlib.contextmanager
    def listen(self, driver_id: str) -> Iterator[asyncio.Queue[str]]:
        """A queue of ``driver_id``'s offer events for as long as the block runs."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._streams.setdefault(driver_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._streams.get(driver_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._streams[driver_id]

    async def _subscribed(self, again: bool) -> None:
        if again:
            # Back after a loss: events published meanwhile are gone.
            for queues in self._streams.values():
                for queue in queues:
                    queue.put_nowait(_RESYNC)

    def _heard(self, channel: str, text: str) -> None:
        for queue in self._streams.get(channel.removeprefix(OFFER_CHANNEL.format("")), ()):
            queue.put_nowait(text)


class MatchingService(matching_service_pb2_grpc.MatchingServiceServicer):
    def __init__(
        self,
        hub: OfferHub,
        offers: OfferStore,
        jobs: JobStore,
        dispatcher: Dispatcher,
        breakers: list[CircuitBreaker],
    ) -> None:
        self._hub = hub
        self._offers = offers
        self._jobs = jobs
        self._dispatcher = dispatcher
        self._breakers = breakers
        self._background: set[asyncio.Task[None]] = set()
        # At most one round and one step per order in flight, however many calls ask.
        self._round = _Coalesced(self._dispatcher.run_once, self._background)
        self._steps: dict[str, _Coalesced] = {}

    @property
    def rounds_run(self) -> int:
        """Dispatch rounds started by DispatchOrder calls."""
        return self._round.runs

    @property
    def rounds_asked(self) -> int:
        """DispatchOrder calls that asked for a round (each one started or joined one)."""
        return self._round.asked

    def _step_soon(self, order_id: str) -> None:
        """Steps ``order_id`` now, or once more after the step already running for it."""
        step = self._steps.get(order_id)
        if step is None:
            step = self._steps[order_id] = _Coalesced(
                lambda: self._dispatcher.step(order_id),
                self._background,
                done=lambda: self._steps.pop(order_id, None),
            )
        step.kick()

    async def AcceptOffer(
        self, request: matching_service_pb2.AcceptOfferRequest, context: grpc.aio.ServicerContext
    ) -> matching_service_pb2.AcceptOfferResponse:
        principal = current_principal()
        principal.require(Role.DRIVER)
        offer, _ = await self._offers.accept(_offer_id(request.offer_id), principal.subject)
        return matching_service_pb2.AcceptOfferResponse(offer=offer_to_proto(offer, operator=False))

    async def DeclineOffer(
        self, request: matching_service_pb2.DeclineOfferRequest, context: grpc.aio.ServicerContext
    ) -> matching_service_pb2.DeclineOfferResponse:
        principal = current_principal()
        principal.require(Role.DRIVER)
        offer = await self._offers.decline(
            _offer_id(request.offer_id),
            principal.subject,
            _DECLINE_REASONS.get(request.reason),
        )
        # The next courier at once; the dispatch loop would get there too (the job is durable).
        self._step_soon(offer.order_id)
        return matching_service_pb2.DeclineOfferResponse(
            offer=offer_to_proto(offer, operator=False)
        )

    async def StreamOffers(
        self, request: matching_service_pb2.StreamOffersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[matching_service_pb2.StreamOffersResponse]:
        principal = current_principal()
        principal.require(Role.DRIVER)
        driver_id = principal.subject
        #: Offers shown on this stream and not yet told closed.
        shown: set[str] = set()

        def show(offer: Offer) -> matching_service_pb2.StreamOffersResponse:
            shown.add(offer.offer_id)
            return matching_service_pb2.StreamOffersResponse(
                offer=offer_to_proto(offer, operator=False)
            )

        def close(offer: Offer) -> matching_service_pb2.StreamOffersResponse:
            shown.discard(offer.offer_id)
            # Still pending in the table but closed: its time is up (the sweep is behind).
            status = OfferStatus.EXPIRED if offer.status is OfferStatus.PENDING else offer.status
            return matching_service_pb2.StreamOffersResponse(
                offer_closed=matching_pb2.OfferClosed(
                    offer_id=offer.offer_id, status=_STATUS[status]
                )
            )

        with self._hub.listen(driver_id) as events:
            # Listening first, then what is pending: an offer made in between comes twice at
            # worst (apps key offers by id), never not at all.
            for offer in await self._offers.pending_for(driver_id):
                yield show(offer)
            while True:
                text = await events.get()
                if text == _RESYNC:
                    # Events may have been lost: what is pending now, and what closed since.
                    pending = await self._offers.pending_for(driver_id)
                    for offer in pending:
                        if offer.offer_id not in shown:
                            yield show(offer)
                    for offer_id in shown - {o.offer_id for o in pending}:
                        made = await self._offers.get(offer_id)
                        if made is not None:
                            yield close(made)
                    continue
                closing = text.startswith(_CLOSED)
                made = await self._offers.get(text.removeprefix(_CLOSED))
                if made is None or made.driver_id != driver_id:
                    continue
                yield close(made) if closing else show(made)

    async def DispatchOrder(
        self,
        request: matching_service_pb2.DispatchOrderRequest,
        context: grpc.aio.ServicerContext,
    ) -> matching_service_pb2.DispatchOrderResponse:
        current_principal().require_service("order")
        order_id = canonical_uuid(request.order_id)
        if order_id is None:
            raise InvalidArgument(FieldViolation("order_id", "must be an order id (a UUID)"))
        await self._jobs.ensure(order_id, None, self._dispatcher.rules.max_attempts)
        await self._jobs.due_now(order_id)
        # A burst of calls costs one round in flight and at most one more after it, not a
        # round each (each round takes every due job anyway).
        self._round.kick()
        return matching_service_pb2.DispatchOrderResponse(
            dispatch_status=await self._status(order_id, operator=True)
        )

    async def GetDispatchStatus(
        self,
        request: matching_service_pb2.GetDispatchStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> matching_service_pb2.GetDispatchStatusResponse:
        principal = current_principal()
        order_id = canonical_uuid(request.order_id)
        if order_id is None:
            raise InvalidArgument(FieldViolation("order_id", "must be an order id (a UUID)"))
        if principal.role in (Role.SERVICE, Role.ADMIN):
            # The full view (who was offered what, and why) is for order_svc and operators.
            principal.require_service("order")
            status = await self._status(order_id, operator=True)
        elif principal.role in (Role.CUSTOMER, Role.MERCHANT):
            # The order's customer and its shop's owner see where the search stands, not who
            # was offered what (nor why).
            status = await self._status(order_id, operator=False, party=principal.subject)
        else:
            raise PermissionDenied(
                "dispatch status is for services, admins, and the order's customer and merchant",
                reason="ROLE_NOT_ALLOWED",
            )
        return matching_service_pb2.GetDispatchStatusResponse(dispatch_status=status)

    async def _status(
        self, order_id: str, *, operator: bool, party: str | None = None
    ) -> matching_pb2.DispatchStatus:
        job = await self._jobs.context(order_id)
        if job is None or (
            party is not None and party not in (job.customer_id, job.merchant_owner_id)
        ):
            # Someone else's order is as unknown to the caller as one never dispatched.
            raise NotFound(f"order {order_id} was never dispatched", reason="NOT_DISPATCHED")
        status = matching_pb2.DispatchStatus(
            order_id=order_id,
            state=_STATES[job.state],
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            driver_id=job.driver_id or "",
            update_time=_ts(job.updated_at),
        )
        if job.state in ("queued", "waiting_for_retry"):
            status.next_attempt_time.FromDatetime(job.next_attempt_at)
        if operator:
            for offer in await self._offers.for_order(order_id):
                status.offers.append(offer_to_proto(offer, operator=True))
                if offer.status is OfferStatus.PENDING:
                    status.current_offer.CopyFrom(offer_to_proto(offer, operator=True))
            for breaker in self._breakers:
                snap = breaker.snapshot()
                entry = status.breakers.add(
                    name=snap.name,
                    state=_BREAKER[snap.state],
                    failure_count=snap.failures,
                    call_count=snap.calls,
                )
                if snap.open_until is not None:
                    entry.open_until_time.FromNanoseconds(int(snap.open_until * 1e9))
        return status

    async def close(self) -> None:
        """Ends the steps still running in the background (the dispatch loop redoes any)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


class DispatchCallCollector(Collector):
    """How many rounds DispatchOrder calls asked for, and how many ran."""

    def __init__(self, service: MatchingService) -> None:
        self._service = service

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "matching_dispatch_round_requests",
            "DispatchOrder calls, each of which started a dispatch round or joined a pending one",
            value=self._service.rounds_asked,
        )
        yield CounterMetricFamily(
            "matching_dispatch_call_rounds",
            "Dispatch rounds started by DispatchOrder calls (the dispatch loop's not counted)",
            value=self._service.rounds_run,
        )


class _Coalesced:
    """Runs ``work`` in the background when kicked: at once if it is idle, else once more when
    the run in flight ends, however many kicks arrive meanwhile (the next run sees all they
    asked for). Failures are logged; the dispatch loop redoes whatever a run left."""

    def __init__(
        self,
        work: Callable[[], Awaitable[object]],
        tasks: set[asyncio.Task[None]],
        done: Callable[[], object] | None = None,
    ) -> None:
        self._work = work
        self._tasks = tasks
        self._done = done
        self._task: asyncio.Task[None] | None = None
        self._again = False
        #: Kicks received.
        self.asked = 0
        #: Runs started.
        self.runs = 0

    def kick(self) -> None:
        self.asked += 1
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.create_task(self._run())
        self._tasks.add(self._task)
        self._task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                self.runs += 1
                try:
                    await self._work()
                except Exception:
                    logger.exception("a dispatch step failed; the dispatch loop retries it")
                if not self._again:
                    return
        finally:
            self._task = None
            if self._done is not None:
                self._done()


class DispatchLoop:
    """The worker that expires offers and runs due jobs, every ``tick_s``."""

    def __init__(self, dispatcher: Dispatcher, tick_s: float = 0.2) -> None:
        self._dispatcher = dispatcher
        self._tick_s = tick_s
        self._stopping = asyncio.Event()
        #: Rounds that failed (PostgreSQL away, say); the next round tries again.
        self.errors = 0

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._dispatcher.run_once()
            except Exception:
                self.errors += 1
                logger.exception("a dispatch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._tick_s)

    def stop(self) -> None:
        self._stopping.set()
