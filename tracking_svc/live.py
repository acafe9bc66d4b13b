"""Live tracking in one process: one feed per watched order and per watched courier, fanned out
to every watcher in memory.

- An :class:`OrderFeed` follows one order's log (announced on one pub/sub channel for the whole
  process), its courier and its estimate, and hands each watcher what it may see.
- A :class:`CourierFeed` holds the one upstream WatchDriverLocation stream of a courier, however
  many orders and watchers follow them, and says when their fixes stop (stale) and resume.
- A :class:`Watcher` is one TrackOrder stream's mailbox: logged updates in order (bounded), and
  only the newest position and estimate, so a slow watcher never slows the others and never
  holds a backlog of positions.

Sequence numbers: a logged update has ``L << 20`` where ``L`` is its number in the order's log
(see :mod:`tracking_svc.store.log`); whatever a watcher is sent between two logged updates
(positions, estimates, staleness) takes the next number after the last one sent. So numbers
increase on every stream, and a resuming watcher is sent every logged update above its
number's ``L``, then the newest position and estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2
from mesh import clock
from mesh.auth import Principal, Role
from mesh.errors import DomainError, NotFound
from mesh.ids import canonical_uuid
from mesh.pubsub import Listener
from tracking_svc.clients.positions import PositionFollower
from tracking_svc.domain.eta import FINAL, Band, Estimate, EtaInputs, EtaRules, estimate
from tracking_svc.domain.routing import RoutePlan, Stop, StopKind, replan
from tracking_svc.domain.travel import Point, TravelTimes, Vehicle
from tracking_svc.store.log import UPDATES_CHANNEL, Entry, TrackingLog, decode_announcement
from tracking_svc.store.orders import Carried, OrderFacts, OrderReader

logger = logging.getLogger(__name__)

#: A courier's route with more stops than this is planned in a worker thread.
_PLAN_INLINE_STOPS = 8
#: Bits of a sequence number below the log number.
SEQ_SHIFT = 20
_SUB_MASK = (1 << SEQ_SHIFT) - 1

_STATUS_NAMES = {
    common_pb2.ORDER_STATUS_PENDING: "pending",
    common_pb2.ORDER_STATUS_CONFIRMED: "confirmed",
    common_pb2.ORDER_STATUS_PREPARING: "preparing",
    common_pb2.ORDER_STATUS_READY_FOR_PICKUP: "ready_for_pickup",
    common_pb2.ORDER_STATUS_PICKED_UP: "picked_up",
    common_pb2.ORDER_STATUS_DELIVERED: "delivered",
    common_pb2.ORDER_STATUS_CANCELLED: "cancelled",
}
STATUS_TO_PROTO = {v: k for k, v in _STATUS_NAMES.items()}
_BEFORE_PICKUP = frozenset({"pending", "confirmed", "preparing", "ready_for_pickup"})

_NOTICE_TEXT: dict[int, str] = {
    tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_STALE: "The courier's position has not been "
    "updated for a while; the marker shows where they were last seen.",
    tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_RESUMED: "The courier's position is live again.",
    tracking_pb2.TRACKING_NOTICE_TYPE_RESYNC: "The stream restarted from a fresh snapshot; "
    "discard what was shown before.",
}


@dataclass(frozen=True)
class LiveRules:
    """What the live feeds do, from the environment (see tracking_svc.settings)."""

    #: A courier whose fixes stopped this long ago is shown as stale.
    stale_after_s: float = 30.0
    #: At most one position per watcher per this many seconds (the newest).
    position_interval_s: float = 1.0
    #: Logged updates a watcher may fall behind before it is sent a fresh snapshot instead.
    max_backlog: int = 256
    #: How long a feed nobody watches is kept before its upstream subscriptions end.
    linger_s: float = 10.0
    #: A moving courier's orders have their estimate recomputed at most this often, in seconds.
    eta_every_s: float = 2.0
    #: How often the route of a courier carrying several orders is planned again, in seconds
    #: (also at every status change of an order watched here).
    route_every_s: float = 10.0
    #: The estimate's fixed parts.
    eta: EtaRules = field(default_factory=EtaRules)


def timestamp_s(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for epoch seconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def duration_s(seconds: float) -> duration_pb2.Duration:
    """A Duration of ``seconds``."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def eta_proto(e: Estimate) -> tracking_pb2.Eta:
    """The contract's form of an estimate."""
    eta = tracking_pb2.Eta(
        estimated_delivery_time=timestamp_s(e.delivery),
        low_delivery_time=timestamp_s(e.low),
        high_delivery_time=timestamp_s(e.high),
        compute_time=timestamp_s(e.computed),
    )
    if e.pickup is not None:
        eta.estimated_pickup_time.CopyFrom(timestamp_s(e.pickup))
    return eta


@dataclass(slots=True)
class Fix:
    """A courier's position as tracking holds it."""

    lat: float
    lng: float
    heading: float
    fix_time_ms: int
    #: When it was received here (monotonic seconds), less its age on arrival.
    seen_at: float


class Watcher:
    """One TrackOrder stream: what is waiting to be sent to it, and its sequence numbers."""

    def __init__(self, principal: Principal, rules: LiveRules) -> None:
        self.principal = principal
        self._rules = rules
        self.last_sent = 0
        #: The order version of the last status sent; older statuses are skipped.
        self.status_version = 0
        self._logged: deque[tuple[int, tracking_service_pb2.TrackOrderResponse]] = deque()
        self._position: tracking_service_pb2.TrackOrderResponse | None = None
        self._eta: tracking_service_pb2.TrackOrderResponse | None = None
        self._notices: deque[tracking_service_pb2.TrackOrderResponse] = deque(maxlen=8)
        self._position_sent_at = -1e9
        self._position_fix_ms = 0
        self.wake = asyncio.Event()
        #: Set when the stream must end: ``None`` ends it cleanly, an error ends it with that.
        self.ended = False
        self.error: DomainError | None = None
        #: Set when the watcher fell too far behind: the stream restarts from a snapshot.
        self.overflowed = False

    def logged(self, seq: int, update: tracking_service_pb2.TrackOrderResponse) -> None:
        if len(self._logged) >= self._rules.max_backlog:
            self.overflowed = True
            self._logged.clear()
        elif not self.overflowed:
            self._logged.append((seq, update))
        self.wake.set()

    def replay(self, entries: list[tuple[int, bytes]]) -> None:
        """Puts logged entries read back from the log before what is queued, in log order."""
        merged = {seq: update for seq, update in self._logged}
        for seq, payload in entries:
            merged.setdefault(seq, tracking_service_pb2.TrackOrderResponse.FromString(payload))
        self._logged = deque(sorted(merged.items(), key=lambda item: item[0]))
        self.wake.set()

    def reset(self, last_sent: int) -> None:
        """Forgets what is queued (a snapshot follows), numbering on from ``last_sent``."""
        self._logged.clear()
        self._notices.clear()
        self._position = None
        self._eta = None
        self.last_sent = last_sent

    def position(self, update: tracking_service_pb2.TrackOrderResponse) -> None:
        self._position = update
        self.wake.set()

    def hide_position(self) -> None:
        self._position = None

    def eta(self, update: tracking_service_pb2.TrackOrderResponse) -> None:
        self._eta = update
        self.wake.set()

    def notice(self, update: tracking_service_pb2.TrackOrderResponse) -> None:
        self._notices.append(update)
        self.wake.set()

    def settle(self) -> None:
        """The order reached its final status: an estimate or position still queued would
        arrive after it and describe a trip that is over, so they are not sent."""
        self._eta = None
        self._position = None

    def end(self, error: DomainError | None = None) -> None:
        self.ended = True
        self.error = error
        self.wake.set()

    def _next(self) -> int:
        # The next number after the last one sent, never reaching the next log number.
        if (self.last_sent & _SUB_MASK) == _SUB_MASK:
            return self.last_sent
        self.last_sent += 1
        return self.last_sent

    def take(
        self, now: float | None = None
    ) -> tuple[list[tracking_service_pb2.TrackOrderResponse], float | None]:
        """What to send now (``now`` by the monotonic clock), and how long until a held-back
        position may go (or ``None``)."""
        out: list[tracking_service_pb2.TrackOrderResponse] = []
        while self._logged:
            seq, update = self._logged.popleft()
            number = seq << SEQ_SHIFT
            if number <= self.last_sent:
                continue
            self.last_sent = number
            if update.HasField("status_update"):
                if update.status_update.version <= self.status_version:
                    continue
                self.status_version = update.status_update.version
            copy = tracking_service_pb2.TrackOrderResponse()
            copy.CopyFrom(update)
            copy.sequence = number
            out.append(copy)
        while self._notices:
            update = self._notices.popleft()
            update.sequence = self._next()
            out.append(update)
        if self._eta is not None:
            self._eta.sequence = self._next()
            out.append(self._eta)
            self._eta = None
        wait = None
        if self._position is not None:
            now = time.monotonic() if now is None else now
            interval = self._rules.position_interval_s
            fix_ms = self._position.courier_position.fix_time.ToMilliseconds()
            due = self._position_sent_at + interval
            # One position per second of the courier's own clock goes at once (a phone sending
            # every second is never held back by the jitter of its arrivals); faster ones wait
            # for their turn by the server's clock.
            paced = fix_ms - self._position_fix_ms >= interval * 1000 and now >= due - interval / 4
            if now >= due or paced:
                self._position.sequence = self._next()
                out.append(self._position)
                self._position = None
                self._position_sent_at = now
                self._position_fix_ms = fix_ms
            else:
                wait = due - now
        return out, wait


class CourierFeed:
    """A courier followed in this process (once, however many orders and watchers follow
    them, on the process's one FollowDrivers stream), and, while they carry several orders,
    the route they are expected to take."""

    def __init__(self, hub: TrackingHub, driver_id: str, vehicle: Vehicle) -> None:
        self.hub = hub
        self.driver_id = driver_id
        self.vehicle = vehicle
        self.orders: set[OrderFeed] = set()
        self.last: Fix | None = None
        self.stale = False
        self._stale_timer: asyncio.TimerHandle | None = None
        hub.follower.follow(driver_id)
        #: The courier's planned route while they carry more than one order, else ``None``.
        self.route: RoutePlan | None = None
        self._replan = asyncio.Event()
        self._carrying = 0
        self._routing = asyncio.create_task(self._plan_routes(), name=f"route {driver_id}")

    def close(self) -> None:
        self.hub.follower.unfollow(self.driver_id)
        self._routing.cancel()
        if self._stale_timer is not None:
            self._stale_timer.cancel()

    @property
    def next_stop(self) -> Stop | None:
        """Where the courier heads now, if they carry several orders."""
        return self.route.stops[0].stop if self.route is not None and self.route.stops else None

    def replan(self) -> None:
        """Plans the courier's route again soon (an order of theirs changed)."""
        self._replan.set()

    async def _plan_routes(self) -> None:
        while True:
            # Cleared before reading: a change heard while planning plans again at once.
            self._replan.clear()
            try:
                carried = await self.hub.orders.load(self.driver_id)
            except Exception as exc:
                logger.warning("could not read the orders of courier %s: %s", self.driver_id, exc)
                carried = None
            if carried is not None:
                self._carrying = len(carried)
                stops = self._stops(carried)
                if len(stops) > _PLAN_INLINE_STOPS:
                    # A long list takes the planner a noticeable time: off the event loop.
                    self._set_route(await asyncio.to_thread(self._plan, stops))
                else:
                    self._set_route(self._plan(stops))
            # A courier with one order is looked at less often: a second one assigned to them
            # (stacking) is the change that matters, and their status changes wake this too.
            every = self.hub.rules.route_every_s * (1 if self._carrying > 1 else 3)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replan.wait(), every)

    def _stops(self, carried: list[Carried]) -> list[Stop]:
        if len(carried) < 2:
            return []
        stops: list[Stop] = []
        rules = self.hub.rules.eta
        for order in carried:
            if order.status != "picked_up":
                stops.append(
                    Stop(
                        f"{order.order_id}/p",
                        order.order_id,
                        StopKind.PICKUP,
                        order.merchant,
                        ready_time=order.ready_at,
                        service_seconds=rules.pickup_service_s,
                    )
                )
            stops.append(
                Stop(
                    f"{order.order_id}/d",
                    order.order_id,
                    StopKind.DROPOFF,
                    order.door,
                    service_seconds=rules.dropoff_service_s,
                )
            )
        return stops

    def _plan(self, stops: list[Stop]) -> RoutePlan | None:
        if not stops or self.last is None:
            return None
        previous = self.route.stop_ids if self.route is not None else []
        try:
            return replan(
                previous,
                Point(self.last.lat, self.last.lng),
                clock.now_ms() / 1000,
                self.vehicle,
                stops,
                self.hub.travel,
            )
        except ValueError as exc:
            logger.warning("no route for courier %s: %s", self.driver_id, exc)
            return None

    def _set_route(self, route: RoutePlan | None) -> None:
        before = self.next_stop
        self.route = route
        after = self.next_stop
        if (before and (before.order_id, before.kind)) != (after and (after.order_id, after.kind)):
            for order in list(self.orders):
                order.route_changed()

    def heard(self, loc: location_pb2.DriverLocation) -> None:
        """Takes a position location_svc reported."""
        if not loc.HasField("fix_time"):
            return
        fix_ms = loc.fix_time.ToMilliseconds()
        if self.last is not None and fix_ms <= self.last.fix_time_ms:
            return
        age = loc.position_age_duration.ToTimedelta().total_seconds()
        seen_at = time.monotonic() - max(0.0, age)
        first = self.last is None
        self.last = Fix(
            loc.position.latitude,
            loc.position.longitude,
            loc.heading_degrees,
            fix_ms,
            seen_at,
        )
        if first:
            self.replan()  # the route starts where the courier is
        was_stale = self.stale
        self.stale = self._age() >= self.hub.rules.stale_after_s
        self._arm()
        for order in list(self.orders):
            order.courier_moved(self, resumed=was_stale and not self.stale)
            if self.stale and not was_stale:
                order.courier_stale(self)

    def _age(self) -> float:
        return 1e9 if self.last is None else time.monotonic() - self.last.seen_at

    def _arm(self) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        if self.last is None or self.stale:
            return
        delay = self.hub.rules.stale_after_s - self._age()
        self._stale_timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._check)

    def _check(self) -> None:
        self._stale_timer = None
        if not self.stale and self._age() >= self.hub.rules.stale_after_s:
            self.stale = True
            for order in list(self.orders):
                order.courier_stale(self)
        else:
            self._arm()


class OrderFeed:
    """One watched order in this process."""

    def __init__(self, hub: TrackingHub, facts: OrderFacts, seq: int) -> None:
        self.hub = hub
        self.order_id = facts.order_id
        self.facts = facts
        #: The newest log number applied.
        self.seq = seq
        self.watchers: set[Watcher] = set()
        self.courier: CourierFeed | None = None
        self.estimate: Estimate | None = None
        self._catching_up: asyncio.Task[None] | None = None
        self._behind = False
        self._linger: asyncio.TimerHandle | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_wanted = False
        self._estimated_at = -1e9
        self._follow_courier()

    # Who may see what.

    def may_watch(self, principal: Principal) -> bool:
        f = self.facts
        if principal.role is Role.ADMIN:
            return True
        if principal.role is Role.CUSTOMER:
            return principal.subject == f.customer_id
        if principal.role is Role.MERCHANT:
            return principal.subject == f.merchant_owner_id
        if principal.role is Role.DRIVER:
            return bool(f.driver_id) and principal.subject == f.driver_id
        return False

    @property
    def another_drop_first(self) -> bool:
        """Whether the courier is on the way to drop another order first."""
        courier = self.courier
        stop = courier.next_stop if courier is not None else None
        return stop is not None and stop.order_id != self.order_id and stop.kind is StopKind.DROPOFF

    def sees_position(self, principal: Principal) -> bool:
        f = self.facts
        if not f.driver_id or f.status in FINAL:
            return False
        if principal.role is Role.MERCHANT:
            return f.status in _BEFORE_PICKUP
        if principal.role is Role.CUSTOMER:
            # Another customer's door is none of this one's business.
            return not self.another_drop_first
        return True

    def route_changed(self) -> None:
        """The courier's next stop changed: some customers see them again, or stop seeing them."""
        hidden = self.another_drop_first
        for watcher in self.watchers:
            if watcher.principal.role is not Role.CUSTOMER:
                continue
            if hidden:
                watcher.hide_position()
                watcher.notice(notice(tracking_pb2.TRACKING_NOTICE_TYPE_COURIER_HAS_ANOTHER_DROP))
            elif self.courier is not None and self.courier.last is not None:
                watcher.position(self._position_update(self.courier))
        self.reestimate(force=True)

    # The log.

    def announced(self, seq: int) -> None:
        if seq > self.seq:
            self.catch_up()

    def catch_up(self) -> None:
        self._behind = True
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._read_log())

    async def _read_log(self) -> None:
        while self._behind:
            self._behind = False
            try:
                entries = await self.hub.log.after(self.order_id, self.seq)
            except Exception as exc:
                logger.warning("reading the log of %s failed: %s", self.order_id, exc)
                await asyncio.sleep(1.0)
                self._behind = True
                continue
            for entry in entries:
                self.apply(entry)

    def apply(self, entry: Entry) -> None:
        if entry.seq <= self.seq:
            return
        self.seq = entry.seq
        update = tracking_service_pb2.TrackOrderResponse.FromString(entry.payload)
        if update.HasField("status_update"):
            status = update.status_update
            if status.version > self.facts.version:
                previous = self.facts.driver_id
                self.facts.version = status.version
                self.facts.status = _STATUS_NAMES.get(status.status, self.facts.status)
                self.facts.driver_id = status.driver_id
                if previous != status.driver_id:
                    self._follow_courier()
                    for watcher in list(self.watchers):
                        if not self.may_watch(watcher.principal):
                            watcher.end(NotFound(f"order {self.order_id} not found"))
                self._refresh_facts()
                if self.courier is not None:
                    self.courier.replan()
        for watcher in self.watchers:
            watcher.logged(entry.seq, update)
            if not self.sees_position(watcher.principal):
                # Sent after this update, a position held back would show what may not be seen.
                watcher.hide_position()
        if self.facts.status in FINAL:
            for watcher in self.watchers:
                watcher.settle()
                watcher.end()
        else:
            self.reestimate(force=update.HasField("status_update"))

    def _refresh_facts(self) -> None:
        """Reads the order again after a status change (times and estimates the log lacks)."""
        self._refresh_wanted = True
        if self._refresh is not None and not self._refresh.done():
            return  # the running read goes round again

        async def refresh() -> None:
            while self._refresh_wanted:
                self._refresh_wanted = False
                try:
                    fresh = await self.hub.orders.facts(self.order_id)
                except Exception as exc:
                    logger.warning("re-reading order %s failed: %s", self.order_id, exc)
                    return
                if fresh is None:
                    return
                self.facts.absorb(fresh)
                if self.courier is not None and self.courier.driver_id == fresh.driver_id:
                    self.courier.vehicle = fresh.vehicle
                self.reestimate(force=True)

        self._refresh = asyncio.create_task(refresh())

    # The courier.

    def _follow_courier(self) -> None:
        driver = self.facts.driver_id if self.facts.status not in FINAL else ""
        if self.courier is not None and self.courier.driver_id == driver:
            return
        if self.courier is not None:
            self.hub.unfollow(self.courier, self)
            self.courier = None
        if driver:
            self.courier = self.hub.follow(driver, self.facts.vehicle, self)

    def _position_update(self, courier: CourierFeed) -> tracking_service_pb2.TrackOrderResponse:
        fix = courier.last
        assert fix is not None
        age = max(0.0, time.monotonic() - fix.seen_at)
        update = tracking_service_pb2.TrackOrderResponse(
            event_time=timestamp_s(fix.fix_time_ms / 1000),
            courier_position=tracking_pb2.CourierPosition(
                position=common_pb2.LatLng(latitude=fix.lat, longitude=fix.lng),
                heading_degrees=fix.heading,
                fix_time=timestamp_s(fix.fix_time_ms / 1000),
                stale=courier.stale,
                position_age_duration=duration_s(age),
            ),
        )
        return update

    def courier_moved(self, courier: CourierFeed, *, resumed: bool) -> None:
        if courier is not self.courier:
            return
        update = self._position_update(courier)
        for watcher in self.watchers:
            if self.sees_position(watcher.principal):
                if resumed:
                    watcher.notice(notice(tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_RESUMED))
                watcher.position(_copy(update))
        self.reestimate()

    def courier_stale(self, courier: CourierFeed) -> None:
        if courier is not self.courier:
            return
        for watcher in self.watchers:
            if self.sees_position(watcher.principal):
                watcher.notice(notice(tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_STALE))

    async def courier_known(self) -> None:
        """Makes sure the courier's position is known, asking location_svc once if not yet."""
        courier = self.courier
        if courier is None or courier.last is not None:
            return
        try:
            response = await self.hub.location.GetDriverLocation(
                location_service_pb2.GetDriverLocationRequest(driver_id=courier.driver_id),
                metadata=self.hub.metadata,
                timeout=self.hub.call_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            logger.info("no position of courier %s: %s", courier.driver_id, err.code())
            return
        courier.heard(response.location)

    # The estimate.

    def compute_estimate(self) -> Estimate | None:
        f = self.facts
        if f.status in FINAL:
            return None
        courier = None
        if self.courier is not None and self.courier.last is not None:
            courier = Point(self.courier.last.lat, self.courier.last.lng)
        now = clock.now_ms() / 1000
        inputs = EtaInputs(
            now=now,
            status=f.status,
            merchant=f.merchant,
            door=f.door,
            prep_s=f.prep_s,
            confirmed_at=f.confirmed_at,
            ready_at=f.ready_at,
            courier=courier,
            assigned=bool(f.driver_id),
            vehicle=f.vehicle,
        )
        hour = time.gmtime(now).tm_hour
        plain = estimate(inputs, self.hub.travel, self.hub.rules.eta, self.hub.band(), hour)
        route = self.courier.route if self.courier is not None else None
        if route is None:
            return plain
        # A courier with several orders serves them in their route's order: this order's
        # times are its stops' in that plan, moved by however late the plan now runs.
        times = {p.stop.stop_id: p.departure_time for p in route.stops}
        late = max(0.0, now - route.start_time)
        dropoff = times.get(f"{self.order_id}/d")
        if dropoff is None:
            return plain
        pickup = times.get(f"{self.order_id}/p")
        shift = dropoff + late - plain.delivery
        return Estimate(
            pickup=None if pickup is None else pickup + late,
            delivery=plain.delivery + shift,
            low=max(now, plain.low + shift),
            high=plain.high + shift,
            computed=now,
        )

    def reestimate(self, *, force: bool = False) -> None:
        """Computes the estimate again and sends it if it moved noticeably; a courier's
        movement recomputes it at most every ``eta_every_s`` (a status change at once)."""
        now = time.monotonic()
        if not force and now - self._estimated_at < self.hub.rules.eta_every_s:
            return
        self._estimated_at = now
        fresh = self.compute_estimate()
        if fresh is None:
            return
        if not force and not fresh.moved(self.estimate, self.hub.rules.eta.noticeable_s):
            return
        if self.estimate is not None and not fresh.moved(self.estimate, 1.0):
            return
        self.estimate = fresh
        update = tracking_service_pb2.TrackOrderResponse(
            event_time=timestamp_s(fresh.computed), eta=tracking_pb2.EtaUpdate(eta=eta_proto(fresh))
        )
        for watcher in self.watchers:
            watcher.eta(_copy(update))

    # Watchers.

    def snapshot(self, watcher: Watcher) -> None:
        """Queues the current state for ``watcher``, numbered from this feed's log number."""
        f = self.facts
        # Numbered as the log entry it stands for, so a resume from it replays what follows.
        watcher.last_sent = max(watcher.last_sent, (self.seq << SEQ_SHIFT) - 1)
        watcher.status_version = f.version - 1
        watcher.logged(
            self.seq,
            tracking_service_pb2.TrackOrderResponse(
                event_time=timestamp_s(f.updated_at),
                status_update=tracking_pb2.OrderStatusUpdate(
                    status=STATUS_TO_PROTO[f.status], driver_id=f.driver_id, version=f.version
                ),
            ),
        )
        self.current(watcher)

    def current(self, watcher: Watcher) -> None:
        """Queues the newest position, staleness and estimate ``watcher`` may see."""
        courier = self.courier
        if watcher.principal.role is Role.CUSTOMER and self.another_drop_first:
            watcher.notice(notice(tracking_pb2.TRACKING_NOTICE_TYPE_COURIER_HAS_ANOTHER_DROP))
        visible = courier is not None and self.sees_position(watcher.principal)
        if visible and courier is not None and courier.last is not None:
            if courier.stale:
                watcher.notice(notice(tracking_pb2.TRACKING_NOTICE_TYPE_POSITION_STALE))
            watcher.position(self._position_update(courier))
        if self.estimate is None:
            self.estimate = self.compute_estimate()
        if self.estimate is not None:
            watcher.eta(
                tracking_service_pb2.TrackOrderResponse(
                    event_time=timestamp_s(self.estimate.computed),
                    eta=tracking_pb2.EtaUpdate(eta=eta_proto(self.estimate)),
                )
            )

    def attach(self, watcher: Watcher) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.watchers.add(watcher)

    def detach(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        if not self.watchers and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(
                self.hub.rules.linger_s, self._expire
            )

    def _expire(self) -> None:
        self._linger = None
        if not self.watchers:
            self.hub.drop(self)

    def close(self) -> None:
        if self.courier is not None:
            self.hub.unfollow(self.courier, self)
            self.courier = None
        for task in (self._catching_up, self._refresh):
            if task is not None:
                task.cancel()
        if self._linger is not None:
            self._linger.cancel()


def notice(
    kind: tracking_pb2.TrackingNoticeType, message: str = ""
) -> tracking_service_pb2.TrackOrderResponse:
    """A notice update of ``kind`` with its standard text."""
    return tracking_service_pb2.TrackOrderResponse(
        event_time=timestamp_s(clock.now_ms() / 1000),
        notice=tracking_pb2.TrackingNotice(
            type=kind, message=message or _NOTICE_TEXT.get(kind, "")
        ),
    )


def _copy(
    update: tracking_service_pb2.TrackOrderResponse,
) -> tracking_service_pb2.TrackOrderResponse:
    out = tracking_service_pb2.TrackOrderResponse()
    out.CopyFrom(update)
    return out


class TrackingHub:
    """The process's feeds, its one log subscription, and the upstream courier streams."""

    def __init__(
        self,
        redis: object,
        log: TrackingLog,
        orders: OrderReader,
        location: location_service_pb2_grpc.LocationServiceStub,
        metadata: tuple[tuple[str, str], ...],
        travel: TravelTimes,
        rules: LiveRules,
        band: Callable[[], Band] = Band,
        call_timeout_s: float = 2.0,
    ) -> None:
        self.log = log
        self.orders = orders
        self.location = location
        self.metadata = metadata
        self.travel = travel
        self.rules = rules
        self.band = band
        self.call_timeout_s = call_timeout_s
        self.feeds: dict[str, OrderFeed] = {}
        self.couriers: dict[str, CourierFeed] = {}
        #: The process's one stream of couriers' positions from location_svc.
        self.follower = PositionFollower(location, metadata, self._located)
        self._opening: dict[str, asyncio.Future[OrderFeed | None]] = {}
        self.listener = Listener(
            redis,  # type: ignore[arg-type]
            self._heard,
            channels=[UPDATES_CHANNEL],
            on_subscribed=self._subscribed,
            name="tracking log subscription",
        )

    async def run(self) -> None:
        follower = asyncio.create_task(self.follower.run())
        try:
            await self.listener.run()
        finally:
            self.follower.stop()
            await asyncio.gather(follower, return_exceptions=True)

    def _located(self, location: location_pb2.DriverLocation) -> None:
        courier = self.couriers.get(location.driver_id)
        if courier is not None:
            courier.heard(location)

    def stop(self) -> None:
        self.listener.stop()
        self.follower.stop()
        for feed in list(self.feeds.values()):
            for watcher in feed.watchers:
                watcher.end()

    def close(self) -> None:
        for feed in list(self.feeds.values()):
            feed.close()
        self.feeds.clear()
        for courier in list(self.couriers.values()):
            courier.close()
        self.couriers.clear()

    def _heard(self, channel: str, text: str) -> None:
        decoded = decode_announcement(text)
        if decoded is None:
            return
        feed = self.feeds.get(decoded[0])
        if feed is not None:
            feed.announced(decoded[1])

    async def _subscribed(self, again: bool) -> None:
        # Announcements made while the subscription was down are lost: read every log again.
        if again:
            for feed in list(self.feeds.values()):
                feed.catch_up()

    async def feed(self, order_id: str) -> OrderFeed | None:
        """The feed of ``order_id``, opened if needed; ``None`` if there is no such order."""
        feed = self.feeds.get(order_id)
        if feed is not None:
            return feed
        opening = self._opening.get(order_id)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[OrderFeed | None] = asyncio.get_running_loop().create_future()
        self._opening[order_id] = future
        try:
            feed = await self._open(order_id)
            future.set_result(feed)
            return feed
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: later waiters may not exist
            raise
        finally:
            del self._opening[order_id]

    async def _open(self, order_id: str) -> OrderFeed | None:
        if canonical_uuid(order_id) is None:
            return None
        facts = await self.orders.facts(order_id)
        if facts is None:
            return None
        state = await self.log.seed(
            order_id,
            now_ms=clock.now_ms(),
            version=facts.version,
            status=facts.status,
            driver_id=facts.driver_id,
        )
        # What the watchers are shown is the log's state at its newest number: the order read
        # may be ahead of it, and the log's next entries bring it to the same place.
        if state.version and state.version < facts.version:
            facts.version, facts.status, facts.driver_id = (
                state.version,
                state.status or facts.status,
                state.driver_id,
            )
        feed = OrderFeed(self, facts, state.seq)
        self.feeds[order_id] = feed
        feed.catch_up()
        return feed

    def drop(self, feed: OrderFeed) -> None:
        if self.feeds.get(feed.order_id) is feed:
            del self.feeds[feed.order_id]
        feed.close()

    def follow(self, driver_id: str, vehicle: Vehicle, order: OrderFeed) -> CourierFeed:
        courier = self.couriers.get(driver_id)
        if courier is None:
            courier = CourierFeed(self, driver_id, vehicle)
            self.couriers[driver_id] = courier
        courier.orders.add(order)
        return courier

    def unfollow(self, courier: CourierFeed, order: OrderFeed) -> None:
        courier.orders.discard(order)
        if not courier.orders:
            courier.close()
            if self.couriers.get(courier.driver_id) is courier:
                del self.couriers[courier.driver_id]
