"""Coalesces believed fixes from every stream into one Redis pipeline per short tick.

A round trip per fix would cap ingest at a few thousand fixes per second; one pipeline per
tick (a few milliseconds) carries hundreds. Each stream is told when its fixes are in Redis,
so acks mean "visible to dispatch", and a stream that sent several fixes within one tick gets
one ack for all of them. A stream's view of the courier moves only once Redis confirmed it
(:class:`AckSink`): a failed write is not acked and leaves nothing half-moved behind.

Everything held in memory is bounded: fixes waiting for a tick (a stream waits for room, so a
stalled Redis slows phones down instead of growing the heap), stored fixes waiting for the
arrival hook (the oldest are dropped, counted and logged) and history rows (the writer's own
bound, :class:`~location_svc.store.history.HistoryWriter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.asyncio import Redis, RedisCluster

from location_svc.domain.fixes import Fix
from location_svc.domain.presence import DriverStatus
from location_svc.store.driver_index import DriverIndex
from location_svc.store.drivers import DriverStore, pack_position
from location_svc.store.geo_index import IndexEntry
from location_svc.store.history import HistoryWriter, history_row
from mesh import clock

logger = logging.getLogger(__name__)

#: The pub/sub channel a driver's live positions go to.
POSITION_CHANNEL = "pos:{}"
#: Sorted set of watched drivers (score: when the watch lapses, in ms).
WATCHED_KEY = "loc:watched"


#: Failed sequences a sink remembers at most (acks wait below the oldest of them).
_MAX_UNSTORED = 256
#: The least time between two warnings about the same overflow, in seconds.
_WARN_EVERY_S = 10.0


class AckSink:
    """One stream's view of the batcher: which of its fixes are stored, what it may ack, and
    where its courier stands as far as Redis has confirmed.

    ``last`` is the newest fix believed on the stream (stored, or on its way): the next fix is
    checked against it. ``stored``, ``shard`` and ``pos_shard`` move only once Redis confirmed
    a write. A write that failed is not acked, ``last`` falls back to the stored fix (so the
    app's resend is taken, not dropped as a repeat), and the next write files the courier from
    where Redis really has them.

    ``acked_sequence`` is the highest sequence processed (stored, or dropped by the sanity
    checks) with nothing below it still on its way or failed: the app may forget every fix up
    to it, as the API promises.
    """

    __slots__ = (
        "_processed",
        "_unstored",
        "_waiting",
        "acked_sequence",
        "event",
        "failed",
        "flushed",
        "last",
        "pending",
        "pos_shard",
        "shard",
        "stored",
    )

    def __init__(self, last: Fix | None = None, shard: str = "", pos_shard: str = "") -> None:
        self.acked_sequence = 0
        self.pending = 0
        self.flushed = 0
        #: Fixes whose write failed.
        self.failed = 0
        self.event = asyncio.Event()
        self.last = last
        self.stored = last
        #: The index slot and the position shard Redis has for the courier (see Update).
        self.shard = shard
        self.pos_shard = pos_shard
        # Sequences submitted and neither stored nor failed yet, in submit order (which is the
        # order ticks write them in).
        self._waiting: deque[int] = deque()
        # Sequences whose write failed and which no fix processed since: acks stay below them.
        self._unstored: set[int] = set()
        self._processed = 0

    def submitted(self, fix: Fix) -> None:
        """Marks ``fix`` believed and on its way to Redis."""
        self.pending += 1
        self._waiting.append(fix.sequence)
        self.last = fix

    def done(self, update: Update) -> None:
        """Marks one submitted fix stored: the courier stands where it put them."""
        self.pending -= 1
        self.flushed += 1
        if self._waiting:
            self._waiting.popleft()
        self.stored = update.fix
        self.shard, self.pos_shard = update.shard, update.pos_shard
        self._processed_up_to(update.fix.sequence)
        self.event.set()

    def lost(self, update: Update) -> None:
        """Marks one submitted fix not stored (the write failed): not acked, and unless a newer
        fix is on its way, the stream believes the stored fix again."""
        self.pending -= 1
        self.failed += 1
        if self._waiting:
            self._waiting.popleft()
        sequence = update.fix.sequence
        if sequence:
            self._unstored.add(sequence)
            if len(self._unstored) > _MAX_UNSTORED:
                self._unstored.discard(min(self._unstored))
        if self.pending <= 0:
            self.last = self.stored
        self._advance()
        self.event.set()

    def dropped(self, sequence: int) -> None:
        """Marks a fix the sanity checks dropped: processed all the same."""
        self._processed_up_to(sequence)
        self.event.set()

    def _processed_up_to(self, sequence: int) -> None:
        if sequence > self._processed:
            self._processed = sequence
        if self._unstored:
            # The app sent it again and it is processed now.
            self._unstored.discard(sequence)
        self._advance()

    def _advance(self) -> None:
        top = self._processed
        if self._waiting:
            top = min(top, self._waiting[0] - 1)
        if self._unstored:
            top = min(top, min(self._unstored) - 1)
        if top > self.acked_sequence:
            self.acked_sequence = top


@dataclass(slots=True)
class Update:
    """A believed live fix to store: driver hash, index (if available), watchers, history."""

    driver_id: str
    fix: Fix
    status: DriverStatus
    vehicle: str
    #: The slot the driver was indexed under before this fix ("" if none; see DriverIndex).
    #: For a stream's fix (``sink`` set) the tick fills it in from what Redis confirmed.
    previous_shard: str
    #: The slot this fix files the driver under: its shard when available, "busy:" and its
    #: shard when busy, "" when offline (not indexed).
    shard: str
    received_ms: int
    sink: AckSink | None = None
    #: The shard of this fix's position (indexed or not) and of the previous position.
    pos_shard: str = ""
    previous_pos_shard: str = ""


@dataclass
class IngestStats:
    """Counters for operators and benches."""

    fixes: int = 0
    ticks: int = 0
    errors: int = 0
    published: int = 0
    max_batch: int = 0
    #: Times a stream or batch waited for room in a full queue.
    waits: int = 0
    #: Stored fixes the arrival hook never saw because it fell too far behind.
    hook_dropped: int = 0


@dataclass
class Ingest:
    """The batcher; one per process, run as a worker beside the gRPC server."""

    redis: Redis
    index: DriverIndex
    drivers: DriverStore
    history: HistoryWriter
    #: Seconds fixes wait for company before a pipeline goes out.
    tick_s: float = 0.004
    #: How often the watched set is read again, in seconds: a new watcher's driver is
    #: published at most this long after the watch is registered.
    watched_refresh_s: float = 0.5
    #: Called with every stored live update (arrival detection hooks in here), from a task of
    #: its own: its round trips never hold up the next tick. Updates reach it in the order
    #: they were stored; when it falls behind it gets several ticks' worth in one call.
    on_stored: Callable[[list[Update]], Awaitable[None]] | None = None
    #: Fixes waiting for a tick at most; beyond, streams and batches wait for room.
    max_pending: int = 20_000
    #: Stored fixes waiting for ``on_stored`` at most; beyond, the oldest are dropped.
    max_hook_backlog: int = 50_000
    stats: IngestStats = field(default_factory=IngestStats)
    _pending: list[Update] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _warned_at: float = 0.0
    _stopping: bool = False
    _watched: frozenset[str] = frozenset()
    _tick_done: asyncio.Future[None] | None = None
    _stored: list[Update] = field(default_factory=list)
    _stored_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _ticks_over: bool = False

    @property
    def queued(self) -> int:
        """Fixes waiting for a tick."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether the queue holds :attr:`max_pending` fixes: wait for :meth:`room` first."""
        return len(self._pending) >= self.max_pending

    async def room(self) -> None:
        """Returns once the queue has room (at once if it has)."""
        while self.full:
            self.stats.waits += 1
            self._room.clear()
            await self._room.wait()

    def submit(self, update: Update) -> asyncio.Future[None]:
        """Queues ``update`` for the next tick; the returned future resolves once it is stored
        (and fails with the error if the write failed). Callers await :meth:`room` before
        submitting to a :attr:`full` queue."""
        self._pending.append(update)
        if update.sink is not None:
            update.sink.submitted(update.fix)
        if self._tick_done is None:
            self._tick_done = asyncio.get_running_loop().create_future()
        self._wake.set()
        return self._tick_done

    async def run(self) -> None:
        """Flushes a pipeline per tick until :meth:`stop`; refreshes the watched set beside."""
        hook = asyncio.create_task(self._run_hook()) if self.on_stored is not None else None
        # Apart from the ticks: a round trip inside a tick would delay every fix of it.
        refresh = asyncio.create_task(self._run_refresh())
        try:
            await self._run_ticks()
        finally:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
            self._ticks_over = True
            if hook is not None:
                # Whatever was stored still reaches the hook before run returns.
                self._stored_wake.set()
                await hook

    async def _run_ticks(self) -> None:
        while not self._stopping or self._pending:
            await self._wake.wait()
            # Let the fixes of this tick gather: the first one waits at most tick_s.
            await asyncio.sleep(self.tick_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # One bad tick must never stop ingest for every driver of this instance.
                self.stats.errors += 1
                logger.exception("an ingest tick failed")

    async def flush(self) -> None:
        """Writes everything queued in one pipeline and wakes the streams waiting on it.

        Only a confirmed write acks a fix and moves its stream's view of the courier; if the
        write fails (or is cancelled: whether Redis took it is unknown), nobody of the tick is
        acked, the tick's future fails, and the streams believe what Redis had before.
        """
        batch, self._pending = self._pending, []
        done, self._tick_done = self._tick_done, None
        self._room.set()
        if not batch:
            if done is not None and not done.done():
                done.set_result(None)
            return
        try:
            await self._write(batch)
        except Exception as exc:
            # Redis is down or failing: the streams' apps resend (their ack never came).
            self.stats.errors += 1
            logger.warning("ingest pipeline of %d fixes failed: %s", len(batch), exc)
            self._failed(batch, done, exc)
            return
        except BaseException as exc:
            self._failed(batch, done, exc)
            raise
        for update in batch:
            if update.sink is not None:
                update.sink.done(update)
        self.stats.fixes += len(batch)
        self.stats.ticks += 1
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        if done is not None and not done.done():
            done.set_result(None)
        now = datetime.now(UTC)
        for update in batch:
            self.history.add(history_row(update.driver_id, update.fix, now, backfilled=False))
        if self.on_stored is not None:
            self._stored.extend(batch)
            excess = len(self._stored) - self.max_hook_backlog
            if excess > 0:
                # The hook is far behind: the oldest fixes are the least worth checking.
                del self._stored[:excess]
                self.stats.hook_dropped += excess
                self._warn(
                    "the stored-fix hook fell behind; %d fixes dropped unseen (%d so far)",
                    excess,
                    self.stats.hook_dropped,
                )
            self._stored_wake.set()

    def _failed(
        self, batch: list[Update], done: asyncio.Future[None] | None, exc: BaseException
    ) -> None:
        """Nobody of ``batch`` is acked; their streams believe what Redis has again."""
        for update in batch:
            if update.sink is not None:
                update.sink.lost(update)
        if done is not None and not done.done():
            done.set_exception(exc)
            done.exception()  # retrieved: callers may not await it

    async def _write(self, batch: list[Update]) -> None:
        """One pipeline for the tick: positions, the index, and watchers' publishes."""
        # Where each stream's courier stands before its fix: as Redis confirmed, or as the
        # fix before it in this tick put them (never as a failed write would have).
        standing: dict[AckSink, tuple[str, str]] = {}
        for update in batch:
            sink = update.sink
            if sink is not None:
                update.previous_shard, update.previous_pos_shard = standing.get(
                    sink, (sink.shard, sink.pos_shard)
                )
                standing[sink] = (update.shard, update.pos_shard)
        pipe = self.redis.pipeline(transaction=False)
        watched = self._watched
        positions: list[tuple[str, bytes, str, str, str, str]] = []
        entries: list[tuple[IndexEntry, str | None]] = []
        entry_shards: list[str] = []
        publishes: list[tuple[str, bytes]] = []
        # The index takes each driver's last update of the tick, from the slot the driver was
        # in before the tick: a removal queued for one update must not run before the filing
        # of an earlier one (a status change between two fixes of one tick).
        latest: dict[str, Update] = {}
        before_tick: dict[str, str] = {}
        for update in batch:
            fix = update.fix
            packed = pack_position(fix, update.received_ms)
            positions.append(
                (
                    update.driver_id,
                    packed,
                    update.pos_shard,
                    update.previous_pos_shard,
                    update.shard,
                    update.previous_shard,
                )
            )
            prior = latest.get(update.driver_id)
            if prior is not None:
                before_tick.setdefault(update.driver_id, prior.previous_shard)
            latest[update.driver_id] = update
            if update.driver_id in watched:
                publishes.append((POSITION_CHANNEL.format(update.driver_id), packed))
        for driver_id, update in latest.items():
            previous = before_tick.get(driver_id, update.previous_shard)
            if update.shard:
                # Presence is judged by the server's clock, not the phone's.
                fix = update.fix
                entry = IndexEntry(driver_id, fix.lat, fix.lng, update.vehicle, update.received_ms)
                entries.append((entry, previous or None))
                entry_shards.append(update.shard)
            elif previous:
                # Offline drivers are not dispatchable: out of the index at once.
                self.index.queue_remove(pipe, driver_id, previous)
        self.drivers.queue_positions(pipe, positions)
        self.index.queue_upserts(pipe, entries, entry_shards)
        if isinstance(self.redis, RedisCluster):
            # A cluster pipeline refuses PUBLISH (it is not a keyed command): publish once the
            # positions are stored, beside the pipeline.
            await pipe.execute()
            await asyncio.gather(*(self.redis.publish(c, m) for c, m in publishes))
        else:
            for channel, message in publishes:
                pipe.publish(channel, message)
            await pipe.execute()
        self.stats.published += len(publishes)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            logger.warning(message, *args)

    async def _run_hook(self) -> None:
        """Hands stored updates to ``on_stored`` until the ticks are over and it has them all."""
        assert self.on_stored is not None
        while True:
            await self._stored_wake.wait()
            self._stored_wake.clear()
            updates, self._stored = self._stored, []
            if updates:
                try:
                    await self.on_stored(updates)
                except Exception:
                    logger.exception("a stored-fix hook failed")
            if self._ticks_over and not self._stored:
                return

    async def _run_refresh(self) -> None:
        while True:
            await self._refresh_watched()
            await asyncio.sleep(self.watched_refresh_s)

    async def _refresh_watched(self) -> None:
        try:
            members = await self.redis.zrangebyscore(WATCHED_KEY, clock.now_ms(), "+inf")
        except Exception as exc:
            logger.warning("could not read watched drivers: %s", exc)
            return
        self._watched = frozenset(bytes(m).decode() for m in members)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Asks :meth:`run` to flush what it holds and return."""
        self._stopping = True
        self._wake.set()
