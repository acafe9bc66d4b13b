"""The position hub: one pub/sub subscription per process for every WatchDriverLocation stream.

A subscription per stream holds a Redis connection each (a few hundred watchers exhaust the
pool and stall ingest); here one connection carries every watched driver's channel and the
hub fans each position out in memory to per-stream mailboxes that keep only the newest one.

Channels, not a pattern: the hub subscribes to ``pos:{driver}`` when the first stream of this
process watches the driver and unsubscribes when the last one leaves. A ``pos:*`` pattern
would hand every instance the positions of every driver watched anywhere in the mesh (each
instance parsing and dropping the others' traffic, which grows with the number of instances);
channel subscriptions cost a SUBSCRIBE per newly watched driver, sent in batches by one task.

Faults: a subscription is lost on a Redis error, and also when its connection stops answering
(a PING after every ``ping_s`` of silence must be answered within ``ping_s``), which a silent
network path or a frozen server would otherwise hide for good; the hub then subscribes again
with a growing delay, and hands every stream its driver's state read again. The renewal of the
watched set retries the same way. Should the hub itself stop, every stream it feeds is woken
and ends with UNAVAILABLE rather than stay open with nothing on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterator
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from location_svc.domain.fixes import Fix
from location_svc.ingest import POSITION_CHANNEL, WATCHED_KEY
from location_svc.store.drivers import DriverRecord, DriverStore, unpack_position
from mesh import clock
from mesh.events import as_text

logger = logging.getLogger(__name__)

_CHANNEL_PREFIX = POSITION_CHANNEL.format("")
#: How many drivers are read from the store at once when the streams are caught up.
_RELOAD_BATCH = 32


class Mailbox:
    """What one stream has not shown yet: the newest position only, so a slow stream never
    builds a backlog and never holds up the hub or other streams."""

    __slots__ = ("_event", "driver_id", "position", "record")

    def __init__(self, driver_id: str) -> None:
        self.driver_id = driver_id
        #: The newest published position not yet taken, with its receive time (ms).
        self.position: tuple[Fix, int] | None = None
        #: The driver's state read again from the store after a lost subscription.
        self.record: DriverRecord | None = None
        self._event = asyncio.Event()

    def put(self, fix: Fix, received_ms: int) -> None:
        """Keeps ``fix`` unless an equally new or newer one is already waiting."""
        if self.position is None or fix.device_time_ms > self.position[0].device_time_ms:
            self.position = (fix, received_ms)
        self._event.set()

    def put_record(self, record: DriverRecord) -> None:
        """Keeps the driver's state as the store has it now (after positions may have been
        lost): the stream shows it even if its position did not change."""
        self.record = record
        self._event.set()

    async def wait(self) -> None:
        """Returns once something is waiting (at once if something already is)."""
        await self._event.wait()

    def wake(self) -> None:
        """Wakes the stream with nothing new (it looks at the hub's state)."""
        self._event.set()

    def take(self) -> tuple[tuple[Fix, int] | None, DriverRecord | None]:
        """Hands over what is waiting and empties the mailbox."""
        taken = (self.position, self.record)
        self.position = self.record = None
        self._event.clear()
        return taken


class Receiver(Protocol):
    """What the hub hands a driver's positions to: a stream's mailbox, or a follower's slot."""

    def put(self, fix: Fix, received_ms: int) -> None: ...

    def put_record(self, record: DriverRecord) -> None: ...

    def wake(self) -> None: ...


class Followed:
    """The mailbox of a FollowDrivers stream: the newest position (and any state read again)
    of each followed driver since the stream last took, behind one event. A slot per driver
    stands in the hub for it."""

    def __init__(self, hub: PositionHub) -> None:
        self._hub = hub
        self._slots: dict[str, _Slot] = {}
        #: Per driver: the newest position not yet taken, and a state read again.
        self.pending: dict[str, tuple[tuple[Fix, int] | None, DriverRecord | None]] = {}
        self._event = asyncio.Event()

    def __contains__(self, driver_id: str) -> bool:
        return driver_id in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def follow(self, driver_id: str) -> None:
        if driver_id not in self._slots:
            slot = self._slots[driver_id] = _Slot(self, driver_id)
            self._hub.attach(driver_id, slot)

    def unfollow(self, driver_id: str) -> None:
        slot = self._slots.pop(driver_id, None)
        if slot is not None:
            self._hub.detach(driver_id, slot)
        self.pending.pop(driver_id, None)

    def close(self) -> None:
        for driver_id in list(self._slots):
            self.unfollow(driver_id)

    def put(self, driver_id: str, fix: Fix, received_ms: int) -> None:
        position, record = self.pending.get(driver_id, (None, None))
        if position is None or fix.device_time_ms > position[0].device_time_ms:
            self.pending[driver_id] = ((fix, received_ms), record)
        self._event.set()

    def put_record(self, driver_id: str, record: DriverRecord) -> None:
        position, _ = self.pending.get(driver_id, (None, None))
        self.pending[driver_id] = (position, record)
        self._event.set()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def take(self) -> dict[str, tuple[tuple[Fix, int] | None, DriverRecord | None]]:
        taken, self.pending = self.pending, {}
        self._event.clear()
        return taken


class _Slot:
    """One followed driver of a :class:`Followed`, as the hub sees it."""

    __slots__ = ("_driver_id", "_followed")

    def __init__(self, followed: Followed, driver_id: str) -> None:
        self._followed = followed
        self._driver_id = driver_id

    def put(self, fix: Fix, received_ms: int) -> None:
        self._followed.put(self._driver_id, fix, received_ms)

    def put_record(self, record: DriverRecord) -> None:
        self._followed.put_record(self._driver_id, record)

    def wake(self) -> None:
        self._followed.wake()


class WatchRenewal:
    """One loop per process that keeps every driver watched here in the watched set (ingest
    publishes the positions of those drivers only): one ZADD for all of them per round, every
    ``ttl_s / 3`` and at once when :meth:`kick` says a driver is newly watched. A Redis error,
    or no answer within ``timeout_s``, is logged and the round retried after ``retry_s``,
    doubled after each further failure up to the renewal interval; it never ends the loop."""

    def __init__(
        self,
        redis: Redis,
        drivers: Collection[str],
        ttl_s: float = 30.0,
        *,
        retry_s: float = 1.0,
        timeout_s: float = 5.0,
        key: str = WATCHED_KEY,
    ) -> None:
        self._redis = redis
        #: The watched drivers, a live collection read at each round.
        self._drivers = drivers
        self._ttl_ms = int(ttl_s * 1000)
        self._interval_s = ttl_s / 3
        self._retry_s = retry_s
        self._timeout_s = timeout_s
        self._key = key
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Rounds that renewed every watched driver, and rounds that failed.
        self.renewals = 0
        self.errors = 0
        #: Rounds failed since the last that renewed.
        self.failing = 0

    def kick(self) -> None:
        """Starts a round now (or as soon as the one under way is done)."""
        self._wake.set()

    async def run(self) -> None:
        """Renews until :meth:`stop`."""
        while not self._stopping.is_set():
            self._wake.clear()
            delay = self._interval_s
            drivers = list(self._drivers)
            if drivers:
                now_ms = clock.now_ms()
                lapses = now_ms + self._ttl_ms
                pipe = self._redis.pipeline(transaction=False)
                pipe.zadd(self._key, dict.fromkeys(drivers, lapses))
                # Lapsed watches would otherwise stay in the set for good.
                pipe.zremrangebyscore(self._key, "-inf", now_ms - self._ttl_ms)
                try:
                    await asyncio.wait_for(pipe.execute(), self._timeout_s)
                    self.renewals += 1
                    self.failing = 0
                except Exception as exc:
                    self.errors += 1
                    self.failing += 1
                    delay = min(self._retry_s * 2 ** (self.failing - 1), self._interval_s)
                    logger.warning(
                        "could not renew %d watched drivers (failure %d in a row); again in "
                        "%.1f s: %r",
                        len(drivers),
                        self.failing,
                        delay,
                        exc,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_or_stop(), delay)

    async def _wake_or_stop(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((stop, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    def stop(self) -> None:
        """Asks :meth:`run` to return."""
        self._stopping.set()


class PositionHub:
    """Fans the positions of watched drivers out to this process's watch streams over one
    pub/sub connection, kept alive across Redis restarts: after a lost subscription it
    subscribes again and hands every stream its driver's state read again from the store
    (positions published meanwhile are gone)."""

    def __init__(
        self,
        redis: Redis,
        drivers: DriverStore,
        *,
        watch_ttl_s: float = 30.0,
        retry_s: float = 1.0,
        max_retry_s: float = 5.0,
        ping_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._drivers = drivers
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._ping_s = ping_s
        #: The loop time anything was last read on the subscription.
        self._heard_at = 0.0
        self._boxes: dict[str, set[Receiver]] = {}
        #: Drivers whose channel was asked for on the current connection, and those whose
        #: subscription Redis confirmed.
        self._requested: set[str] = set()
        self._subscribed: set[str] = set()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.renewal = WatchRenewal(
            redis, self._boxes.keys(), watch_ttl_s, retry_s=retry_s, timeout_s=2 * ping_s
        )
        #: Set once subscribed the first time.
        self.ready = asyncio.Event()
        #: Subscriptions lost so far (errors and connections that stopped answering).
        self.errors = 0
        #: Whether :meth:`run` has ended (stopped or failed): streams end with UNAVAILABLE.
        self.ended = False

    # --- what streams use ---------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, driver_id: str) -> Iterator[Mailbox]:
        """A mailbox of ``driver_id``'s positions for as long as the block runs."""
        box = Mailbox(driver_id)
        self.attach(driver_id, box)
        try:
            yield box
        finally:
            self.detach(driver_id, box)

    def attach(self, driver_id: str, box: Receiver) -> None:
        """Hands ``driver_id``'s positions (and states read again) to ``box`` until detached."""
        boxes = self._boxes.get(driver_id)
        if boxes is None:
            boxes = self._boxes[driver_id] = set()
            self._changed.set()
            self.renewal.kick()
        boxes.add(box)

    def detach(self, driver_id: str, box: Receiver) -> None:
        """Stops handing ``driver_id``'s positions to ``box``."""
        boxes = self._boxes.get(driver_id)
        if boxes is None:
            return
        boxes.discard(box)
        if not boxes:
            del self._boxes[driver_id]
            # Left in the watched set until its watch lapses: another instance may still
            # have watchers of this driver.
            self._changed.set()

    def watchers(self, driver_id: str) -> int:
        """How many streams of this process watch ``driver_id``."""
        return len(self._boxes.get(driver_id, ()))

    @property
    def subscribed_drivers(self) -> int:
        """How many drivers' channels Redis confirmed subscribed on the hub's connection."""
        return len(self._subscribed)

    # --- the subscription ---------------------------------------------------------------------

    async def run(self) -> None:
        """Keeps the subscription and the renewal going until :meth:`stop`; streams still
        open when it ends (stopped or failed) are woken to end with UNAVAILABLE."""
        self.ended = False
        renewal = asyncio.create_task(self.renewal.run())
        try:
            await self._run_subscription()
        except BaseException:
            logger.exception("the position hub failed; its watch streams end")
            raise
        finally:
            self.ended = True
            for boxes in list(self._boxes.values()):
                for box in list(boxes):
                    box.wake()
            self.renewal.stop()
            await renewal

    def stop(self) -> None:
        """Asks :meth:`run` to return."""
        self._stopping.set()
        self._changed.set()

    async def _run_subscription(self) -> None:
        failing = 0
        while not self._stopping.is_set():
            if not self._boxes:
                # Nobody watches yet: no connection is held until somebody does.
                await self._changed.wait()
                self._changed.clear()
                continue
            pubsub = self._redis.pubsub()
            self._requested, self._subscribed = set(), set()
            tasks: list[asyncio.Task[None]] = []
            try:
                await self._sync(pubsub)
                # Every subscription confirmed before the streams are caught up: a position
                # published after that reaches them, one published before is in the store.
                await asyncio.wait_for(self._confirm(pubsub), 2 * self._ping_s)
                failing = 0
                again = self.ready.is_set()
                self.ready.set()
                tasks = [
                    asyncio.create_task(self._read(pubsub)),
                    asyncio.create_task(self._keep_subscribed(pubsub)),
                ]
                if again:
                    self.renewal.kick()
                    await self._reload()
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            except Exception as exc:
                self.errors += 1
                failing += 1
                delay = min(self._retry_s * 2 ** (failing - 1), self._max_retry_s)
                logger.warning(
                    "position subscription lost (failure %d in a row); subscribing again in "
                    "%.1f s: %r",
                    failing,
                    delay,
                    exc,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        await task
                self._requested, self._subscribed = set(), set()
                # Bounded: closing a connection nobody answers on must not hold the hub.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self._ping_s)

    async def _confirm(self, pubsub: PubSub) -> None:
        """Reads until Redis has confirmed every subscription asked for."""
        while not self._requested <= self._subscribed:
            self._handle(await pubsub.get_message(timeout=None))

    async def _keep_subscribed(self, pubsub: PubSub) -> None:
        """Follows the watched drivers, and checks that the connection still answers (a PING
        after ``ping_s`` of silence); the only task that writes to the connection."""
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._ping_s)
            if self._stopping.is_set():
                return
            if self._changed.is_set():
                await self._sync(pubsub)
            silent = loop.time() - self._heard_at
            if silent >= 2 * self._ping_s:
                # A PING went out at least ping_s ago and nothing came back.
                raise ConnectionError(
                    f"the position subscription's connection has not answered for {silent:.1f} s"
                )
            if silent >= self._ping_s:
                await pubsub.ping()

    async def _sync(self, pubsub: PubSub) -> None:
        """Subscribes to the newly watched drivers and drops the unwatched, a command each."""
        self._changed.clear()
        wanted = set(self._boxes)
        gone = self._requested - wanted
        new = wanted - self._requested
        if gone:
            self._requested -= gone
            # Never with no arguments: that would unsubscribe from everything.
            await pubsub.unsubscribe(*(POSITION_CHANNEL.format(d) for d in gone))
        if new:
            self._requested |= new
            await pubsub.subscribe(*(POSITION_CHANNEL.format(d) for d in new))

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            self._handle(await pubsub.get_message(timeout=None))

    def _handle(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        # Any reply (a position, a confirmation, a pong) shows the connection alive.
        self._heard_at = asyncio.get_running_loop().time()
        kind = message.get("type")
        if kind == "message":
            self._heard(as_text(message["channel"]), message["data"])
        elif kind == "subscribe":
            self._subscribed.add(as_text(message["channel"]).removeprefix(_CHANNEL_PREFIX))
        elif kind == "unsubscribe":
            self._subscribed.discard(as_text(message["channel"]).removeprefix(_CHANNEL_PREFIX))

    def _heard(self, channel: str, data: bytes) -> None:
        boxes = self._boxes.get(channel.removeprefix(_CHANNEL_PREFIX))
        if not boxes:
            return
        try:
            fix, received_ms = unpack_position(bytes(data))
        except ValueError:
            logger.warning("unreadable position on %s: %r", channel, data)
            return
        for box in boxes:
            box.put(fix, received_ms)

    async def _reload(self) -> None:
        """Hands every stream its driver's state as the store has it now."""
        drivers = list(self._boxes)
        for start in range(0, len(drivers), _RELOAD_BATCH):
            batch = drivers[start : start + _RELOAD_BATCH]
            records = await asyncio.gather(*(self._drivers.load(d) for d in batch))
            for driver_id, record in zip(batch, records, strict=True):
                if record is None:
                    continue
                for box in self._boxes.get(driver_id, ()):
                    box.put_record(record)
