"""Coalesces believed fixes from every stream into one Redis pipeline per short tick.

A round trip per fix would cap ingest at a few thousand fixes per second; one pipeline per
tick (a few milliseconds) carries hundreds. Each stream is told when its fixes are in Redis,
so acks mean "visible to dispatch", and a stream that sent several fixes within one tick gets
one ack for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class AckSink:
    """What a stream needs to hear from the batcher: its fixes are stored."""

    __slots__ = ("acked_sequence", "event", "flushed", "pending")

    def __init__(self) -> None:
        self.acked_sequence = 0
        self.pending = 0
        self.flushed = 0
        self.event = asyncio.Event()

    def done(self, sequence: int) -> None:
        """Marks one submitted fix stored."""
        self.pending -= 1
        self.flushed += 1
        if sequence > self.acked_sequence:
            self.acked_sequence = sequence
        self.event.set()


@dataclass(slots=True)
class Update:
    """A believed live fix to store: driver hash, index (if available), watchers, history."""

    driver_id: str
    fix: Fix
    status: DriverStatus
    vehicle: str
    #: The slot the driver was indexed under before this fix ("" if none; see DriverIndex).
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
    stats: IngestStats = field(default_factory=IngestStats)
    _pending: list[Update] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    _watched: frozenset[str] = frozenset()
    _tick_done: asyncio.Future[None] | None = None
    _stored: list[Update] = field(default_factory=list)
    _stored_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _ticks_over: bool = False

    def submit(self, update: Update) -> asyncio.Future[None]:
        """Queues ``update`` for the next tick; the returned future resolves once it is stored."""
        self._pending.append(update)
        if update.sink is not None:
            update.sink.pending += 1
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
        """Writes everything queued in one pipeline and wakes the streams waiting on it."""
        batch, self._pending = self._pending, []
        done, self._tick_done = self._tick_done, None
        if not batch:
            if done is not None and not done.done():
                done.set_result(None)
            return
        pipe = self.redis.pipeline(transaction=False)
        stored: list[Update] = []
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
            stored.append(update)
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
        try:
            if isinstance(self.redis, RedisCluster):
                # A cluster pipeline refuses PUBLISH (it is not a keyed command): publish
                # once the positions are stored, beside the pipeline.
                await pipe.execute()
                await asyncio.gather(*(self.redis.publish(c, m) for c, m in publishes))
            else:
                for channel, message in publishes:
                    pipe.publish(channel, message)
                await pipe.execute()
            self.stats.published += len(publishes)
        except Exception as exc:
            # Redis is down or failing: the fixes are not stored, so nobody is acked; the
            # streams' apps resend (their ack never came) and the next tick tries again.
            self.stats.errors += 1
            logger.warning("ingest pipeline of %d fixes failed: %s", len(batch), exc)
            for update in batch:
                if update.sink is not None:
                    update.sink.pending -= 1
                    update.sink.event.set()
            if done is not None and not done.done():
                done.set_exception(exc)
                done.exception()  # retrieved: callers may not await it
            return
        now = datetime.now(UTC)
        for update in batch:
            fix = update.fix
            self.history.add(history_row(update.driver_id, fix, now, backfilled=False))
            if update.sink is not None:
                update.sink.done(fix.sequence)
        self.stats.fixes += len(batch)
        self.stats.ticks += 1
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        if done is not None and not done.done():
            done.set_result(None)
        if self.on_stored is not None:
            self._stored.extend(stored)
            self._stored_wake.set()

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
