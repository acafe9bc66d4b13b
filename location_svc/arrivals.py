"""Arrival detection in the service: order fences in Redis, live fixes in, arrival events out.

Three parts around the pure state machine of :mod:`location_svc.domain.geofence`:

- :class:`ActiveOrders` keeps each courier's active orders (their merchant and customer points and
  whether the order was picked up). A consumer of the order event stream (one group for all
  location_svc instances) writes them to Redis, so every instance and a restarted one see the
  same fences; each instance caches them, and a pub/sub message per change tells every instance
  which courier's cache to drop (a consumer group hands each event to one instance only).
- :class:`ArrivalDetector` is the batcher's ``on_stored`` hook: it runs the state machine over
  the live fixes of couriers with active orders and appends a ``DriverArrivalEvent`` to the
  location event stream for each arrival. A courier without active orders costs a dict lookup.
- :func:`build_arrivals` makes both and returns the workers to run beside the server.

Redis keys (each courier's keys share the hash tag ``{<driver_id>}``, so a script may use both):

- ``fence:{<driver_id>}`` HASH: ``<order_id>`` -> ``version|leg|mlat|mlng|clat|clng``, and a
  ``<order_id>/<kind>`` field per event already fired for that order (the at-most-once gate).
- ``fence:gone:{<driver_id>}`` HASH: ``<order_id>`` -> the order version that removed the fence,
  so an older event delivered late (the relay may republish) cannot bring it back.
- ``fence:drivers`` SET: couriers that may have fences; read when an instance (re)starts.
- ``fence:changed`` pub/sub channel: the id of a courier whose fences changed.
- ``fence:outbox:{<driver_id>}`` HASH: ``<order_id>/<kind>`` -> ``<claim ms>|<event payload>``,
  each event fired but not yet known to be on the location stream. The fired mark and this
  record are written by one script (both or neither); the record goes once the event is on the
  stream, so an event whose publish failed, timed out or was cut short by a crash is published
  later by any instance's outbox relay, never lost and never fired twice.
- ``fence:outbox`` ZSET: couriers whose outbox may hold events (score: when one was last added),
  what the relay reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_events_pb2
from delivery.order.v1 import order_events_pb2
from location_svc.domain.geofence import (
    Arrival,
    ArrivalKind,
    GeofenceRules,
    GeofenceTracker,
    Leg,
    OrderFence,
)
from location_svc.ingest import Update
from mesh import clock
from mesh.events import (
    Event,
    EventConsumer,
    as_text,
    entry_fields,
    parse_payload,
    stream_for,
)
from mesh.pubsub import Listener

logger = logging.getLogger(__name__)

#: A worker for ``MeshServer.add_worker``: ``(run, stop)``.
Worker = tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]

#: The consumer group every location_svc instance reads the order events in.
ORDER_GROUP = "location-geofences"
#: The prefix of the Redis keys and the channel (tests use their own).
DEFAULT_PREFIX = "fence"
#: The geofence rules used unless others are given.
DEFAULT_RULES = GeofenceRules()
#: The ``type`` field of each arrival's stream entry.
EVENT_TYPES: Mapping[ArrivalKind, str] = {
    ArrivalKind.ARRIVED_AT_MERCHANT: "location.arrived_at_merchant",
    ArrivalKind.ARRIVED_AT_CUSTOMER: "location.arrived_at_customer",
    ArrivalKind.APPROACHING_CUSTOMER: "location.approaching_customer",
}
_PROTO_TYPES: Mapping[ArrivalKind, location_events_pb2.ArrivalEventType] = {
    ArrivalKind.ARRIVED_AT_MERCHANT: location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT,
    ArrivalKind.ARRIVED_AT_CUSTOMER: location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER,
    ArrivalKind.APPROACHING_CUSTOMER: location_events_pb2.ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER,
}
# Event ids are derived from (order, courier, kind): an event published twice (by two instances,
# or again after a reply was lost) has one id, and the consumers' dedupe drops the copy.
_EVENT_ID_NAMESPACE = uuid.UUID("5b0e1f3c-6a8e-4c5e-9d0e-2f7a4d1c8b6e")
_TERMINAL = frozenset(
    {
        common_pb2.ORDER_STATUS_DELIVERED,
        common_pb2.ORDER_STATUS_CANCELLED,
    }
)

# Applies one order event to a courier's fences unless a newer one was applied already. The
# same event applied again applies again (a handler retried after a failure must still get to
# announce the change); a fence is not put back by the version that removed it.
# KEYS: the courier's fences, their tombstones.
# ARGV: 'put' or 'del', order id, order version, encoded fence, fence TTL, tombstone TTL, and the
# fired-event fields of the order (removed with it).
# Returns -1 when the event is older than what is stored, else how many fields the hash holds.
_APPLY = """
local put = ARGV[1] == 'put'
local order = ARGV[2]
local version = tonumber(ARGV[3])
local gone = tonumber(redis.call('HGET', KEYS[2], order) or '-1')
if gone > version or (put and gone == version) then return -1 end
local current = redis.call('HGET', KEYS[1], order)
if current and tonumber(string.match(current, '^%d+')) > version then return -1 end
if put then
  redis.call('HSET', KEYS[1], order, ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
else
  redis.call('HDEL', KEYS[1], order, unpack(ARGV, 7))
  redis.call('HSET', KEYS[2], order, ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return redis.call('HLEN', KEYS[1])
"""

# Records that an event fired, once, together with the event in the courier's outbox: 1 if this
# call did, 0 if it had fired already, -1 if the order is no longer the courier's (a fired mark
# must not outlive its fence). A script is not rolled back by an error, so the outbox write,
# the one that can fail (a key of the wrong type), comes before the mark: both or neither.
# KEYS: the courier's fences, their outbox. ARGV: order id, fired field, device time of the
# event, outbox record, outbox TTL.
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# Drops a courier from the outbox registry unless an event was added since it was read.
# KEYS: the registry. ARGV: the courier, the score read.
_UNLIST = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def encode_fence(fence: OrderFence) -> str:
    """The hash value that stores ``fence`` (its order id is the field)."""
    leg = "c" if fence.leg is Leg.TO_CUSTOMER else "m"
    return (
        f"{fence.version}|{leg}|{fence.merchant_lat!r}|{fence.merchant_lng!r}"
        f"|{fence.customer_lat!r}|{fence.customer_lng!r}"
    )


def decode_fence(order_id: str, value: bytes | str) -> OrderFence:
    """The inverse of :func:`encode_fence`; ValueError if ``value`` is not one."""
    version, leg, mlat, mlng, clat, clng = as_text(value).split("|")
    return OrderFence(
        order_id,
        float(mlat),
        float(mlng),
        float(clat),
        float(clng),
        Leg.TO_CUSTOMER if leg == "c" else Leg.TO_MERCHANT,
        int(version),
    )


def fired_field(order_id: str, kind: ArrivalKind) -> str:
    """The hash field that marks ``kind`` fired for ``order_id``."""
    return f"{order_id}/{kind.value}"


def event_id(order_id: str, driver_id: str, kind: ArrivalKind) -> str:
    """The id of the one event of ``kind`` for this courier on this order."""
    return uuid.uuid5(_EVENT_ID_NAMESPACE, f"{order_id}/{driver_id}/{kind.value}").hex


@dataclass(frozen=True, slots=True)
class FenceChanges:
    """What one order event does to the couriers' fences."""

    #: ``(driver_id, fence)`` to store.
    puts: tuple[tuple[str, OrderFence], ...] = ()
    #: ``(driver_id, order_id)`` to remove.
    removals: tuple[tuple[str, str], ...] = ()
    #: The order version of the event (older events than what is stored are ignored).
    version: int = 0


def fence_changes(event: order_events_pb2.OrderEvent) -> FenceChanges:
    """How an order event changes the fences, from the order's state it carries.

    Every event carries the courier and both points, so any event of an order with a courier
    (re)states its fence: an assignment adds it, the pickup moves it to the customer's leg, and
    a missed or trimmed event is repaired by the next one. A courier taken off the order
    (``previous_driver_id``) and a finished order lose it.
    """
    removals: list[tuple[str, str]] = []
    puts: list[tuple[str, OrderFence]] = []
    driver = event.driver_id
    previous = event.previous_driver_id
    if previous and previous != driver:
        removals.append((previous, event.order_id))
    if driver:
        if event.status in _TERMINAL:
            removals.append((driver, event.order_id))
        elif event.HasField("merchant_location") and event.HasField("delivery_location"):
            leg = (
                Leg.TO_CUSTOMER
                if event.status == common_pb2.ORDER_STATUS_PICKED_UP
                else Leg.TO_MERCHANT
            )
            fence = OrderFence(
                event.order_id,
                event.merchant_location.latitude,
                event.merchant_location.longitude,
                event.delivery_location.latitude,
                event.delivery_location.longitude,
                leg,
                event.version,
            )
            puts.append((driver, fence))
    return FenceChanges(tuple(puts), tuple(removals), event.version)


@dataclass(frozen=True, slots=True)
class FenceView:
    """A courier's active orders as stored, and the events already fired for them."""

    fences: Mapping[str, OrderFence]
    #: ``(order_id, kind)`` of every event fired.
    fired: frozenset[tuple[str, ArrivalKind]]


def _decode_view(raw: Mapping[Any, Any]) -> FenceView:
    fences: dict[str, OrderFence] = {}
    fired: set[tuple[str, ArrivalKind]] = set()
    for key, value in raw.items():
        name = as_text(key)
        try:
            if "/" in name:
                order_id, kind = name.split("/", 1)
                fired.add((order_id, ArrivalKind(kind)))
            else:
                fences[name] = decode_fence(name, value)
        except ValueError:
            # Written by a newer or broken writer: skipping one order beats failing them all.
            logger.warning("ignoring an unreadable fence field", extra={"field": name})
    return FenceView(fences, frozenset(fired))


@dataclass(slots=True)
class _Entry:
    """What one instance knows of a courier's fences."""

    view: FenceView | None = None
    #: Bumped by every invalidation.
    gen: int = 0
    #: The ``gen`` the view was loaded at; the view is stale while the two differ.
    loaded_gen: int = -1


class ActiveOrders:
    """Every courier's active orders, shared in Redis and cached per process.

    The cache knows which couriers have fences at all (the dict every fix is checked against)
    and, read through from Redis, what they are. It is kept current by :meth:`invalidate`: called
    here by the order event consumer, and for changes made by other instances by the pub/sub
    listener (:meth:`run`), which on every (re)subscription also reloads the set of couriers with
    fences, since messages published while it was not subscribed are lost.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        consumer_name: str,
        stream: str | None = None,
        group: str = ORDER_GROUP,
        prefix: str = DEFAULT_PREFIX,
        fence_ttl_s: int = 12 * 3600,
        tombstone_ttl_s: int = 24 * 3600,
        group_start_id: str = "0",
        retry_delay_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._registry = f"{prefix}:drivers"
        #: The pub/sub channel that announces changed couriers.
        self.channel = f"{prefix}:changed"
        # A fence outlives its order only if the events that end it were lost; then it expires.
        self._fence_ttl_s = fence_ttl_s
        self._tombstone_ttl_s = tombstone_ttl_s
        self._retry_delay_s = retry_delay_s
        self._entries: dict[str, _Entry] = {}
        self._listener = Listener(
            redis,
            self._heard,
            channels=[self.channel],
            on_subscribed=self._subscribed,
            retry_s=retry_delay_s,
            name="fence listener",
        )
        #: Set once the listener has subscribed and loaded the couriers with fences.
        self.ready = self._listener.ready
        #: Reads the order events (a worker; see :meth:`workers`).
        self.consumer = EventConsumer(
            redis,
            stream or stream_for("order"),
            group,
            consumer_name,
            self.handle,
            group_start_id=group_start_id,
            retry_delay_s=retry_delay_s,
        )
        #: Fence writes applied.
        self.applied = 0
        #: Fence writes skipped because a newer order event had been applied.
        self.outdated = 0
        #: Change messages heard from the channel (this instance's own included).
        self.heard = 0
        self._load_errors = 0

    def fence_key(self, driver_id: str) -> str:
        """The hash of ``driver_id``'s fences and fired events."""
        return f"{self._prefix}:{{{driver_id}}}"

    def tombstone_key(self, driver_id: str) -> str:
        """The hash of ``driver_id``'s removed orders and the versions that removed them."""
        return f"{self._prefix}:gone:{{{driver_id}}}"

    def outbox_key(self, driver_id: str) -> str:
        """The hash of ``driver_id``'s events fired but not yet known to be published."""
        return f"{self._prefix}:outbox:{{{driver_id}}}"

    @property
    def outbox_registry(self) -> str:
        """The sorted set of couriers whose outbox may hold events."""
        return f"{self._prefix}:outbox"

    def workers(self) -> list[Worker]:
        """The pub/sub listener and the order event consumer, as ``(run, stop)`` pairs."""
        return [(self.run, self.stop), (self.consumer.run, self.consumer.stop)]

    # --- the hot path -------------------------------------------------------------------------

    def has(self, driver_id: str) -> bool:
        """Whether ``driver_id`` may have active orders (no I/O: one dict lookup)."""
        return driver_id in self._entries

    async def views(self, driver_ids: Collection[str]) -> dict[str, FenceView]:
        """The fences of those of ``driver_ids`` that have any, loading stale ones in one trip.

        If Redis fails, the last views loaded are returned (arrivals wait; fixes do not).
        """
        entries = self._entries
        stale = [
            d for d in driver_ids if (e := entries.get(d)) is not None and e.loaded_gen != e.gen
        ]
        if stale:
            try:
                await self._load(stale)
            except Exception as err:
                self._load_errors += 1
                logger.warning("could not load fences: %r", err)
        return {
            d: e.view
            for d in driver_ids
            if (e := entries.get(d)) is not None and e.view is not None
        }

    async def _load(self, driver_ids: list[str]) -> None:
        gens = [self._entries[d].gen for d in driver_ids]
        pipe = self._redis.pipeline(transaction=False)
        for driver_id in driver_ids:
            pipe.hgetall(self.fence_key(driver_id))
        replies = await pipe.execute()
        gone: list[str] = []
        for driver_id, gen, raw in zip(driver_ids, gens, replies, strict=True):
            entry = self._entries.get(driver_id)
            if entry is None:
                continue
            entry.view = _decode_view(raw)
            entry.loaded_gen = gen
            if not entry.view.fences and entry.gen == gen:
                # No orders any more: back to costing nothing per fix.
                del self._entries[driver_id]
                gone.append(driver_id)
        if gone:
            await self._prune(gone)

    # --- the at-most-once gate ----------------------------------------------------------------

    def queue_claim(
        self, pipe: Pipeline, driver_id: str, arrival: Arrival, payload: bytes, now_ms: int
    ) -> None:
        """Queues the claim of ``arrival`` on ``pipe``: its fired mark and its event
        (``payload``) in the courier's outbox, in one step; the reply is 1 if this claim won."""
        pipe.eval(
            _CLAIM,
            2,
            self.fence_key(driver_id),
            self.outbox_key(driver_id),
            arrival.order_id,
            fired_field(arrival.order_id, arrival.kind),
            arrival.time_ms,
            b"%d|" % now_ms + payload,
            self._fence_ttl_s,
        )

    def queue_listed(self, pipe: Pipeline, driver_ids: Iterable[str], now_ms: int) -> None:
        """Queues the listing of ``driver_ids`` in the outbox registry (before their claims:
        a courier with events in its outbox is always listed)."""
        pipe.zadd(self.outbox_registry, dict.fromkeys(driver_ids, now_ms))

    def queue_sent(self, pipe: Pipeline, driver_id: str, arrival_field: str) -> None:
        """Queues the removal of an event from the outbox once it is on the stream."""
        pipe.hdel(self.outbox_key(driver_id), arrival_field)

    async def outbox(self) -> dict[str, tuple[float, dict[str, bytes]]]:
        """Every listed courier: the score it was listed with and its outbox (field ->
        record)."""
        listed: Any = await self._redis.zrange(self.outbox_registry, 0, -1, withscores=True)
        if not listed:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for member, _ in listed:
            pipe.hgetall(self.outbox_key(as_text(member)))
        found: dict[str, tuple[float, dict[str, bytes]]] = {}
        for (member, score), raw in zip(listed, await pipe.execute(), strict=True):
            found[as_text(member)] = (score, {as_text(k): bytes(v) for k, v in raw.items()})
        return found

    async def unlist(self, driver_id: str, score: float) -> None:
        """Drops ``driver_id`` from the outbox registry unless listed again since ``score``."""
        await self._redis.eval(_UNLIST, 1, self.outbox_registry, driver_id, repr(int(score)))

    # --- writes, from the order events --------------------------------------------------------

    async def handle(self, event: Event) -> None:
        """The order event handler: applies what the event says about the couriers' fences."""
        message = order_events_pb2.OrderEvent()
        if not parse_payload(event, message):
            return
        changes = fence_changes(message)
        for driver_id, fence in changes.puts:
            await self.put(driver_id, fence)
        for driver_id, order_id in changes.removals:
            await self.remove(driver_id, order_id, changes.version)

    async def put(self, driver_id: str, fence: OrderFence) -> bool:
        """Stores ``fence`` for ``driver_id`` unless a newer version is stored; True if it was."""
        size = await self._apply("put", driver_id, fence.order_id, fence.version, fence)
        if size < 0:
            return False
        # After the hash exists, never before: see _prune.
        await self._redis.sadd(self._registry, driver_id)
        await self._changed(driver_id)
        return True

    async def remove(self, driver_id: str, order_id: str, version: int) -> bool:
        """Removes ``order_id``'s fence from ``driver_id`` as of ``version``; True if it did."""
        size = await self._apply("del", driver_id, order_id, version, None)
        if size < 0:
            return False
        if size == 0:
            await self._prune([driver_id])
        await self._changed(driver_id)
        return True

    async def _apply(
        self, op: str, driver_id: str, order_id: str, version: int, fence: OrderFence | None
    ) -> int:
        reply = await self._redis.eval(
            _APPLY,
            2,
            self.fence_key(driver_id),
            self.tombstone_key(driver_id),
            op,
            order_id,
            version,
            encode_fence(fence) if fence is not None else "",
            self._fence_ttl_s,
            self._tombstone_ttl_s,
            *(fired_field(order_id, kind) for kind in ArrivalKind),
        )
        size = int(reply)
        if size < 0:
            self.outdated += 1
        else:
            self.applied += 1
        return size

    async def _prune(self, driver_ids: Iterable[str]) -> None:
        """Drops couriers without fences from the registry, without losing a concurrent add.

        A writer adds to the registry after writing the fence; here the member goes first and
        the fence is checked after. Whichever order the two interleave in, a courier with a
        fence ends up in the registry: a fence written before the check is seen and re-added,
        one written after is followed by its writer's add.
        """
        ids = list(driver_ids)
        await self._redis.srem(self._registry, *ids)
        pipe = self._redis.pipeline(transaction=False)
        for driver_id in ids:
            pipe.exists(self.fence_key(driver_id))
        present = [d for d, n in zip(ids, await pipe.execute(), strict=True) if n]
        if present:
            await self._redis.sadd(self._registry, *present)

    async def _changed(self, driver_id: str) -> None:
        self.invalidate(driver_id)
        await self._redis.publish(self.channel, driver_id)

    # --- invalidation -------------------------------------------------------------------------

    def invalidate(self, driver_id: str) -> None:
        """Marks ``driver_id``'s fences stale (or possible, if they had none)."""
        entry = self._entries.get(driver_id)
        if entry is None:
            self._entries[driver_id] = _Entry()
        else:
            entry.gen += 1

    async def run(self) -> None:
        """Listens for changed couriers until :meth:`stop`, resubscribing after Redis errors."""
        await self._listener.run()

    def _heard(self, channel: str, driver_id: str) -> None:
        self.heard += 1
        self.invalidate(driver_id)

    async def _subscribed(self, again: bool) -> None:
        # Subscribed first, loaded second: a change in between is heard, not missed.
        await self._reload()

    @property
    def errors(self) -> int:
        """Redis errors the listener and the read-through recovered from."""
        return self._listener.errors + self._load_errors

    async def _reload(self) -> None:
        members = await self._redis.smembers(self._registry)
        for driver_id in [*self._entries, *(as_text(m) for m in members)]:
            self.invalidate(driver_id)

    def stop(self) -> None:
        """Asks :meth:`run` to return."""
        self._listener.stop()


@dataclass(slots=True)
class _Courier:
    """One courier's state machines, one per active order."""

    view: FenceView | None = None
    trackers: dict[str, GeofenceTracker] = field(default_factory=dict)


class ArrivalDetector:
    """Runs the geofences over live fixes and publishes what they fire (the Ingest hook).

    The dwell in progress lives in this process: a courier whose stream moves to another
    instance starts their current dwell again there. What fired is shared through Redis, so an
    event fires once per courier and order whichever instance sees the fixes.

    An event is claimed (its fired mark) and put in the courier's outbox in one step, then
    appended to the stream and taken out of the outbox. An append that fails, times out or is
    cut short by a crash leaves the event in the outbox, and :meth:`run` (on every instance)
    publishes it ``relay_after_s`` later. Delivery is at least once with one event id (a
    relayed copy of an event whose append did land is dropped by the consumers' dedupe); an
    event is never lost once claimed and never claimed twice.
    """

    def __init__(
        self,
        redis: Redis,
        orders: ActiveOrders,
        rules: GeofenceRules = DEFAULT_RULES,
        *,
        stream: str | None = None,
        maxlen: int = 100_000,
        relay_every_s: float = 1.0,
        relay_after_s: float = 3.0,
        unlist_after_s: float = 30.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._orders = orders
        self._rules = rules
        #: The stream arrivals are published on.
        self.stream = stream or stream_for("location")
        self._maxlen = maxlen
        self._relay_every_s = relay_every_s
        # Younger outbox entries are most likely being appended by their claimer right now.
        self._relay_after_ms = int(relay_after_s * 1000)
        self._unlist_after_ms = int(unlist_after_s * 1000)
        self._max_backoff_s = max_backoff_s
        self._stopping = asyncio.Event()
        self._couriers: dict[str, _Courier] = {}
        #: Events published (by the detector or the outbox relay).
        self.published = 0
        #: Events published by the outbox relay after their first append failed or was lost.
        self.relayed = 0
        #: Events not published because another instance (or an earlier run) had fired them.
        self.already_fired = 0
        #: Batches whose events could not be claimed (they fire again on a later fix), appends
        #: that failed (their events stay in the outbox) and relay rounds that failed.
        self.errors = 0

    async def on_stored(self, updates: list[Update]) -> None:
        """Feeds stored live fixes to the geofences of their couriers and publishes arrivals."""
        has = self._orders.has
        couriers = self._couriers
        mine = [u for u in updates if has(u.driver_id) or u.driver_id in couriers]
        if not mine:
            return
        views = await self._orders.views({u.driver_id for u in mine})
        fired: list[tuple[str, Arrival, GeofenceTracker]] = []
        for update in mine:
            view = views.get(update.driver_id)
            if view is None or not view.fences:
                couriers.pop(update.driver_id, None)
                continue
            for tracker in self._sync(update.driver_id, view).values():
                for arrival in tracker.observe(update.fix):
                    fired.append((update.driver_id, arrival, tracker))
        if fired:
            await self._publish(fired)

    def _sync(self, driver_id: str, view: FenceView) -> dict[str, GeofenceTracker]:
        """The courier's state machines, brought in line with ``view`` if it changed."""
        courier = self._couriers.get(driver_id)
        if courier is None:
            courier = self._couriers[driver_id] = _Courier()
        if courier.view is view:
            return courier.trackers
        trackers = courier.trackers
        for order_id in [o for o in trackers if o not in view.fences]:
            del trackers[order_id]
        for order_id, fence in view.fences.items():
            fired = {kind for o, kind in view.fired if o == order_id}
            tracker = trackers.get(order_id)
            if tracker is None:
                trackers[order_id] = GeofenceTracker(fence, self._rules, fired)
                continue
            if tracker.fence != fence:
                tracker.update(fence)
            tracker.fired |= fired
        courier.view = view
        return trackers

    async def _publish(self, fired: list[tuple[str, Arrival, GeofenceTracker]]) -> None:
        """Claims each event with its outbox entry (at most once, across instances), then
        appends the winners."""
        now_ms = clock.now_ms()
        payloads = [_payload(driver_id, arrival) for driver_id, arrival, _ in fired]
        try:
            # Listed first, on its own: a courier with events in its outbox is always listed
            # (a cluster pipeline may run commands for different nodes in any order).
            pipe = self._redis.pipeline(transaction=False)
            self._orders.queue_listed(pipe, {driver_id for driver_id, _, _ in fired}, now_ms)
            await pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            for (driver_id, arrival, _), payload in zip(fired, payloads, strict=True):
                self._orders.queue_claim(pipe, driver_id, arrival, payload, now_ms)
            replies = await pipe.execute()
        except Exception as err:
            self.errors += 1
            logger.warning("could not claim %d arrival events: %r", len(fired), err)
            # Not claimed, or claimed with the reply lost: the next fix fires them again, and a
            # claim that did land answers "fired already" while the relay publishes its entry.
            for _, arrival, tracker in fired:
                tracker.forget(arrival.kind)
            return
        won: list[tuple[str, str, bytes]] = []
        for (driver_id, arrival, _), payload, reply in zip(fired, payloads, replies, strict=True):
            if int(reply) == 1:
                won.append((driver_id, fired_field(arrival.order_id, arrival.kind), payload))
            else:
                # Fired elsewhere already, or the order left the courier meanwhile.
                self.already_fired += 1
        if won:
            await self._send(won)

    async def _send(self, items: list[tuple[str, str, bytes]], *, relayed: bool = False) -> int:
        """Appends claimed events (``(driver_id, fired field, payload)``) to the stream and
        takes those that landed out of the outbox; how many landed."""
        pipe = self._redis.pipeline(transaction=False)
        for _, _, payload in items:
            pipe.xadd(self.stream, _entry(payload), maxlen=self._maxlen, approximate=True)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as err:
            replies = [err] * len(items)
        sent = [item for item, reply in zip(items, replies, strict=True) if not _failed(reply)]
        if len(sent) < len(items):
            self.errors += 1
            error = next(r for r in replies if _failed(r))
            logger.warning(
                "could not publish %d arrival events; they stay in the outbox: %r",
                len(items) - len(sent),
                error,
            )
        if not sent:
            return 0
        self.published += len(sent)
        if relayed:
            self.relayed += len(sent)
        for driver_id, name, _ in sent:
            logger.info(
                "courier %s%s",
                name.partition("/")[2],
                " (from the outbox)" if relayed else "",
                extra={"driver_id": driver_id, "order_id": name.partition("/")[0]},
            )
        pipe = self._redis.pipeline(transaction=False)
        for driver_id, name, _ in sent:
            self._orders.queue_sent(pipe, driver_id, name)
        try:
            await pipe.execute()
        except Exception as err:
            # Published all the same; the relay appends them again with the same event ids,
            # and the consumers drop the copies.
            logger.warning("could not clear %d published arrival events: %r", len(sent), err)
        return len(sent)

    async def relay(self) -> int:
        """Publishes the outbox entries at least ``relay_after_s`` old, and unlists couriers
        whose outbox has been empty since ``unlist_after_s``; how many events it published."""
        now_ms = clock.now_ms()
        due: list[tuple[str, str, bytes]] = []
        for driver_id, (score, records) in (await self._orders.outbox()).items():
            if not records:
                if now_ms - score >= self._unlist_after_ms:
                    await self._orders.unlist(driver_id, score)
                continue
            for name, record in records.items():
                claimed, _, payload = record.partition(b"|")
                try:
                    _entry(payload)
                    claimed_ms = int(claimed)
                except (ValueError, KeyError, DecodeError):
                    # No retry makes it readable; kept, it would be tried every round forever.
                    logger.error(
                        "dropping an unreadable arrival outbox entry",
                        extra={"driver_id": driver_id, "field": name},
                    )
                    await self._redis.hdel(self._orders.outbox_key(driver_id), name)
                    continue
                if now_ms - claimed_ms >= self._relay_after_ms:
                    due.append((driver_id, name, payload))
        return await self._send(due, relayed=True) if due else 0

    async def run(self) -> None:
        """Relays the outbox every ``relay_every_s`` until :meth:`stop`; after a failed round
        the next waits twice as long as the last (up to ``max_backoff_s``)."""
        failures = 0
        while not self._stopping.is_set():
            delay = self._relay_every_s
            try:
                await self.relay()
                failures = 0
            except Exception as err:
                failures += 1
                self.errors += 1
                delay = min(self._relay_every_s * 2**failures, self._max_backoff_s)
                logger.warning("arrival outbox relay failed; again in %.1f s: %r", delay, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def stop(self) -> None:
        """Asks :meth:`run` to return."""
        self._stopping.set()


def _failed(reply: object) -> bool:
    return isinstance(reply, BaseException)


_KINDS: Mapping[int, ArrivalKind] = {proto: kind for kind, proto in _PROTO_TYPES.items()}


def _payload(driver_id: str, arrival: Arrival) -> bytes:
    """The serialized event of one arrival."""
    occur = timestamp_pb2.Timestamp()
    occur.FromMilliseconds(arrival.time_ms)
    return location_events_pb2.DriverArrivalEvent(
        event_id=event_id(arrival.order_id, driver_id, arrival.kind),
        driver_id=driver_id,
        order_id=arrival.order_id,
        type=_PROTO_TYPES[arrival.kind],
        position=common_pb2.LatLng(latitude=arrival.lat, longitude=arrival.lng),
        occur_time=occur,
    ).SerializeToString()


def _entry(payload: bytes) -> dict[FieldT, EncodableT]:
    """The stream entry of one arrival's serialized event; KeyError or DecodeError if it is
    not one."""
    event = location_events_pb2.DriverArrivalEvent.FromString(payload)
    return entry_fields(
        event_id=event.event_id,
        event_type=EVENT_TYPES[_KINDS[event.type]],
        aggregate_id=event.order_id,
        payload=payload,
        occurred_at=event.occur_time.ToDatetime(tzinfo=UTC),
    )


def build_arrivals(
    redis: Redis,
    *,
    rules: GeofenceRules = DEFAULT_RULES,
    consumer_name: str,
    order_stream: str | None = None,
    location_stream: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> tuple[ActiveOrders, ArrivalDetector, list[Worker]]:
    """The active orders, the detector (pass ``detector.on_stored`` to Ingest), and the workers.

    ``consumer_name`` names this instance in the order events' consumer group; it should
    survive a restart (a pod or host name) so the instance re-reads what it had not finished.
    """
    orders = ActiveOrders(redis, consumer_name=consumer_name, stream=order_stream, prefix=prefix)
    detector = ArrivalDetector(redis, orders, rules, stream=location_stream)
    return orders, detector, [*orders.workers(), (detector.run, detector.stop)]
