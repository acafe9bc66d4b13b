"""Location history: fixes buffered in memory and written to PostgreSQL with COPY in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class HistoryWriter:
    """Buffers history rows and COPYs them into ``driver_location_history`` (partitioned by day).

    History is best effort by design: a fix is acknowledged once it is in the live index, and
    a crash loses at most one flush interval of history, never an order or a status change.
    """

    def __init__(
        self, pool: asyncpg.Pool, *, flush_interval_s: float = 0.5, max_rows: int = 50_000
    ) -> None:
        self._pool = pool
        self._interval = flush_interval_s
        self._max_rows = max_rows
        self._rows: list[Row] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._partitions_until: datetime | None = None
        #: Rows written so far.
        self.written = 0
        #: Rows lost because PostgreSQL refused them (logged).
        self.lost = 0

    def add(self, row: Row) -> None:
        """Queues one row; a full buffer wakes the writer early."""
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
        """Writes every buffered row now; returns how many."""
        rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            async with self._pool.acquire() as conn:
                await conn.copy_records_to_table(
                    "driver_location_history", records=rows, columns=_COLUMNS
                )
        except (asyncpg.PostgresError, OSError) as exc:
            self.lost += len(rows)
            logger.error("lost %d location history rows: %s", len(rows), exc)
            return 0
        self.written += len(rows)
        return len(rows)

    async def run(self) -> None:
        """Flushes every interval (or when the buffer fills) until :meth:`stop`, then once more."""
        while not self._stopping.is_set():
            if self._partitions_until is None or datetime.now(UTC) > self._partitions_until:
                try:
                    await self.ensure_partitions()
                except (asyncpg.PostgresError, OSError) as exc:
                    logger.warning("could not create history partitions: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()
        await self.flush()

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
