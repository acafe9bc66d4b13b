"""Location history: fixes buffered in memory and written to PostgreSQL with COPY in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from location_svc.domain.fixes import Fix

logger = logging.getLogger(__name__)

_COLUMNS = (
    "driver_id",
    "recorded_at",
    "received_at",
    "lat",
    "lng",
    "accuracy_m",
    "heading_deg",
    "speed_mps",
    "backfilled",
)
#: One history row, in ``_COLUMNS`` order.
Row = tuple[str, datetime, datetime, float, float, float, float, float, bool]

#: Errors that say PostgreSQL is away for now (the rows are kept and tried again), as opposed
#: to rows it refuses (dropped and counted: trying them again would refuse them again).
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
#: The least time between two warnings about rows dropped for lack of room, in seconds.
_WARN_EVERY_S = 10.0


class HistoryWriter:
    """Buffers history rows and COPYs them into ``driver_location_history`` (partitioned by day).

    History is best effort by design: a fix is acknowledged once it is in the live index, and
    a crash loses at most one flush interval of history, never an order or a status change.
    While PostgreSQL is away the rows wait (tried again with a growing pause), at most
    ``max_buffered`` of them: beyond, the oldest are dropped, counted in :attr:`lost` and
    logged, so an outage costs history, never the memory GPS ingest runs in. The writer never
    dies of a failed write or an unexpected error: it logs, counts and goes on.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        flush_interval_s: float = 0.5,
        max_rows: int = 50_000,
        max_buffered: int = 200_000,
        max_backoff_s: float = 30.0,
        copy_timeout_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._interval = flush_interval_s
        self._max_rows = max_rows
        self._max_buffered = max(max_buffered, max_rows)
        self._max_backoff_s = max_backoff_s
        self._copy_timeout_s = copy_timeout_s
        self._rows: list[Row] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._partitions_until: datetime | None = None
        self._warned_at = 0.0
        #: Failed writes in a row (the pause before the next one grows with them).
        self._failures = 0
        #: Rows written so far.
        self.written = 0
        #: Rows lost: refused by PostgreSQL, or dropped for lack of room (logged).
        self.lost = 0
        #: Writes that failed (rows refused, PostgreSQL away, anything unexpected).
        self.errors = 0

    @property
    def buffered(self) -> int:
        """Rows waiting to be written."""
        return len(self._rows)

    def add(self, row: Row) -> None:
        """Queues one row; a full batch wakes the writer early, a full buffer drops the oldest
        rows (a tenth of it at once, so a long outage costs one warning now and then)."""
        if len(self._rows) >= self._max_buffered:
            excess = len(self._rows) - self._max_buffered + max(1, self._max_buffered // 10)
            del self._rows[:excess]
            self.lost += excess
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                logger.warning(
                    "location history buffer full (%d rows): dropped the oldest %d "
                    "(%d lost so far)",
                    self._max_buffered,
                    excess,
                    self.lost,
                )
        self._rows.append(row)
        if len(self._rows) >= self._max_rows:
            self._wake.set()

    async def ensure_partitions(self, now: datetime | None = None) -> None:
        """Creates the daily partitions for yesterday through two days ahead (idempotent)."""
        today = (now or datetime.now(UTC)).date()
        async with self._pool.acquire() as conn:
            for offset in range(-1, 3):
                await conn.execute(
                    "SELECT ensure_location_history_partition($1::date)",
                    today + timedelta(days=offset),
                )
        self._partitions_until = datetime.now(UTC) + timedelta(hours=1)

    async def flush(self) -> int:
        """Writes the buffered rows now (a batch of at most ``max_rows``); returns how many.

        PostgreSQL away: the rows go back to the front of the buffer for the next try.
        Rows refused (or an error nobody expected): they are dropped, counted and logged,
        since the same rows would fail the same way again. Never raises but for cancellation.
        """
        rows = self._rows[: self._max_rows]
        if not rows:
            return 0
        del self._rows[: len(rows)]
        try:
            async with asyncio.timeout(self._copy_timeout_s), self._pool.acquire() as conn:
                await conn.copy_records_to_table(
                    "driver_location_history", records=rows, columns=_COLUMNS
                )
        except _TRANSIENT as exc:
            self.errors += 1
            self._failures += 1
            kept = max(0, min(len(rows), self._max_buffered - len(self._rows)))
            self._rows[:0] = rows[len(rows) - kept :]
            self.lost += len(rows) - kept
            logger.warning(
                "location history unwritten, %d rows kept for the next try: %s", kept, exc
            )
            return 0
        except asyncio.CancelledError:
            self._rows[:0] = rows
            raise
        except Exception as exc:
            self.errors += 1
            self.lost += len(rows)
            logger.error("lost %d location history rows: %r", len(rows), exc)
            return 0
        self._failures = 0
        self.written += len(rows)
        return len(rows)

    def _pause_s(self) -> float:
        """How long to wait before the next write: the interval, doubled per failure in a row."""
        if not self._failures:
            return self._interval
        return min(self._max_backoff_s, self._interval * 2.0 ** min(self._failures, 16))

    async def run(self) -> None:
        """Flushes every interval (or when a batch fills) until :meth:`stop`, then what is left
        (unless PostgreSQL is away: then the rows go with the process)."""
        while not self._stopping.is_set():
            try:
                await self._round()
            except Exception:
                # Nothing stops the writer: the next round tries again, a while later.
                self.errors += 1
                self._failures += 1
                logger.exception("the location history writer failed; going on")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._pause_s())
        while self._rows:
            failures = self._failures
            await self.flush()
            if self._failures > failures:
                break  # PostgreSQL is away: what is left goes with the process

    async def _round(self) -> None:
        if self._partitions_until is None or datetime.now(UTC) > self._partitions_until:
            try:
                await self.ensure_partitions()
            except (asyncpg.PostgresError, *_TRANSIENT) as exc:
                logger.warning("could not create history partitions: %s", exc)
        pause = self._pause_s()
        if self._failures:
            # Backing off: only stop ends the pause early, a full batch does not.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
        self._wake.clear()
        while await self.flush() and len(self._rows) >= self._max_rows:
            pass

    def stop(self) -> None:
        """Asks :meth:`run` to write what it holds and return."""
        self._stopping.set()
        self._wake.set()


def history_row(driver_id: str, fix: Fix, received: datetime, *, backfilled: bool) -> Row:
    """The history row of one fix received at ``received``."""
    return (
        driver_id,
        datetime.fromtimestamp(fix.device_time_ms / 1000, UTC),
        received,
        fix.lat,
        fix.lng,
        fix.accuracy_m,
        fix.heading_deg,
        fix.speed_mps,
        backfilled,
    )


async def recent_tracks(
    pool: asyncpg.Pool,
    *,
    south: float,
    west: float,
    north: float,
    east: float,
    since: datetime,
    limit: int = 500_000,
) -> list[list[tuple[float, float, float]]]:
    """Couriers' fixes inside a box since a time, as one ``(lat, lng, epoch s)`` track per
    courier in time order: the read function other services use to learn from the fleet's
    movements (tracking_svc's street speeds). At most ``limit`` fixes, the newest first kept."""
    rows = await pool.fetch(
        """
        SELECT driver_id, lat, lng, extract(epoch FROM recorded_at) AS t
          FROM (SELECT driver_id, lat, lng, recorded_at FROM driver_location_history
                 WHERE recorded_at >= $5 AND lat BETWEEN $1 AND $3 AND lng BETWEEN $2 AND $4
                 ORDER BY recorded_at DESC LIMIT $6) recent
         ORDER BY driver_id, recorded_at
        """,
        south,
        west,
        north,
        east,
        since,
        limit,
    )
    tracks: dict[object, list[tuple[float, float, float]]] = {}
    for row in rows:
        tracks.setdefault(row["driver_id"], []).append(
            (float(row["lat"]), float(row["lng"]), float(row["t"]))
        )
    return list(tracks.values())
