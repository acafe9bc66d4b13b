"""The outbox relay: publishes committed outbox rows to Redis Streams and marks them published.

Delivery is at least once. A batch is published (XADD) before the transaction that marks it
published commits; a relay that dies in between leaves the rows unpublished, and they are
published again. Consumers drop the duplicates by event id (:class:`mesh.events.EventConsumer`).

Order: within one batch, entries are added in outbox id order. Ids are drawn at INSERT, not at
COMMIT, so an event with a lower id can be published after one with a higher id, and several
relays publish their batches concurrently; consumers that care about order compare the version
carried in the event rather than its position in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh.events import entry_fields, stream_for
from mesh.logs import configure_logging
from mesh.server import announce, die_with_parent
from mesh.settings import Settings, env_float, env_int
from mesh.stores import open_stores

logger = logging.getLogger(__name__)

_SELECT_BATCH = """
    SELECT id, aggregate_type, aggregate_id::text AS aggregate_id, event_type, payload, headers,
           created_at
    FROM outbox
    WHERE published_at IS NULL AND parked_at IS NULL
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"""

_MARK_PUBLISHED = """
    UPDATE outbox SET published_at = now(), publish_attempts = publish_attempts + 1
    WHERE id = ANY($1::bigint[])
"""

# A row that failed on its own (not with its batch): counted, and parked at the limit so the
# rows behind it are published. Runs in the batch's transaction, which holds the rows' locks.
_RECORD_ROW_FAILURE = """
    UPDATE outbox
    SET publish_attempts = publish_attempts + 1,
        failures = failures + 1,
        last_error = $2,
        parked_at = CASE WHEN failures + 1 >= $3 THEN now() END
    WHERE id = $1
    RETURNING parked_at IS NOT NULL AS parked, failures
"""

# A whole batch failed (Redis or PostgreSQL down): the attempt is recorded, but it is not the
# rows' fault, so it does not count toward parking. Skips rows another relay has locked since
# our rollback: waiting for them would stall this relay, and that relay is about to publish
# them anyway.
_RECORD_FAILURE = """
    UPDATE outbox SET publish_attempts = publish_attempts + 1, last_error = $2
    WHERE id IN (
        SELECT id FROM outbox
        WHERE id = ANY($1::bigint[]) AND published_at IS NULL
        FOR UPDATE SKIP LOCKED
    )
"""


@dataclass(frozen=True)
class RelaySettings:
    """How the relay batches, waits and trims."""

    #: Largest number of rows published in one transaction and one Redis pipeline.
    batch_size: int = 500
    #: Seconds to wait before looking again when the outbox is drained.
    idle_sleep_s: float = 0.05
    #: Approximate length each stream is trimmed to (XADD MAXLEN ~); consumers must keep up.
    maxlen: int = 1_000_000
    #: Longest wait between retries while PostgreSQL or Redis fails, in seconds.
    max_backoff_s: float = 5.0
    #: Seconds one Redis pipeline may take before the batch is rolled back and retried.
    publish_timeout_s: float = 10.0
    #: Failures of one row on its own (not with its whole batch) after which it is parked.
    max_row_failures: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RelaySettings:
        """Reads ``DELIVERY_RELAY_*``."""
        return cls(
            batch_size=env_int(env, "RELAY_BATCH_SIZE", cls.batch_size),
            idle_sleep_s=env_float(env, "RELAY_IDLE_SLEEP_S", cls.idle_sleep_s),
            maxlen=env_int(env, "RELAY_MAXLEN", cls.maxlen),
            max_backoff_s=env_float(env, "RELAY_MAX_BACKOFF_S", cls.max_backoff_s),
            publish_timeout_s=env_float(env, "RELAY_PUBLISH_TIMEOUT_S", cls.publish_timeout_s),
            max_row_failures=env_int(env, "RELAY_MAX_ROW_FAILURES", cls.max_row_failures),
        )


class OutboxRelay:
    """Moves committed outbox rows to their streams, one locked batch at a time.

    Several relays may run against one database: each batch is claimed with ``FOR UPDATE SKIP
    LOCKED``, so relays never publish the same row concurrently and never wait on each other.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        *,
        batch_size: int = RelaySettings.batch_size,
        idle_sleep_s: float = RelaySettings.idle_sleep_s,
        maxlen: int = RelaySettings.maxlen,
        max_backoff_s: float = RelaySettings.max_backoff_s,
        publish_timeout_s: float = RelaySettings.publish_timeout_s,
        max_row_failures: int = RelaySettings.max_row_failures,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._batch_size = batch_size
        self._idle_sleep_s = idle_sleep_s
        self._maxlen = maxlen
        self._max_backoff_s = max_backoff_s
        self._publish_timeout_s = publish_timeout_s
        self._max_row_failures = max(1, max_row_failures)
        self._stopping = asyncio.Event()
        #: Rows published and marked.
        self.published = 0
        #: Batches published and marked.
        self.batches = 0
        #: Batches that failed and were rolled back to be retried.
        self.errors = 0
        #: Rows that failed on their own (their batch's other rows were published).
        self.row_failures = 0
        #: Rows parked after failing ``max_row_failures`` times.
        self.parked = 0

    @classmethod
    def configured(cls, pool: asyncpg.Pool, redis: Redis, settings: RelaySettings) -> OutboxRelay:
        """A relay with ``settings`` (see :meth:`RelaySettings.from_env`)."""
        return cls(
            pool,
            redis,
            batch_size=settings.batch_size,
            idle_sleep_s=settings.idle_sleep_s,
            maxlen=settings.maxlen,
            max_backoff_s=settings.max_backoff_s,
            publish_timeout_s=settings.publish_timeout_s,
            max_row_failures=settings.max_row_failures,
        )

    def stop(self) -> None:
        """Asks :meth:`run` to return once the batch in hand is published and marked."""
        self._stopping.set()

    async def run(self) -> None:
        """Relays until :meth:`stop`, polling when the outbox is empty and backing off on errors."""
        backoff = self._idle_sleep_s
        while not self._stopping.is_set():
            try:
                count = await self.relay_once()
            except Exception:
                # Nothing is lost: the batch rolled back and its rows stay unpublished.
                self.errors += 1
                logger.exception("relaying a batch failed; retrying in %.2fs", backoff)
                await self._sleep(backoff)
                backoff = min(max(backoff * 2, 0.1), self._max_backoff_s)
                continue
            backoff = self._idle_sleep_s
            if count < self._batch_size:
                # A short batch means the outbox is drained; a full one means more may wait.
                await self._sleep(self._idle_sleep_s)

    async def relay_once(self) -> int:
        """Publishes and marks one batch; returns how many rows it held (0 when drained).

        A row that fails on its own (it cannot be turned into a stream entry, or Redis refuses
        its entry) is counted and, at ``max_row_failures``, parked; the rest of its batch is
        published. Raises if PostgreSQL or Redis fails as a whole; the batch's transaction is
        then rolled back, and the attempt is recorded on its rows when the database allows.
        """
        async with self._pool.acquire() as conn:
            ids: list[int] = []
            try:
                async with conn.transaction():
                    rows = await conn.fetch(_SELECT_BATCH, self._batch_size)
                    if not rows:
                        return 0
                    ids = [row["id"] for row in rows]
                    async with asyncio.timeout(self._publish_timeout_s):
                        failed = await self._publish(rows)
                    published = [i for i in ids if i not in failed]
                    if published:
                        await conn.execute(_MARK_PUBLISHED, published)
                    for row_id, error in failed.items():
                        await self._record_row_failure(conn, row_id, error)
            except Exception as err:
                if ids:
                    await self._record_failure(conn, ids, err)
                raise
        self.published += len(published)
        self.batches += 1
        logger.debug("published %d outbox rows", len(published), extra={"last_id": ids[-1]})
        return len(ids)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> dict[int, str]:
        """Adds the rows' entries; returns the rows that failed on their own, with the error."""
        failed: dict[int, str] = {}
        sent: list[int] = []
        # One pipeline for the whole batch: a round trip per row would cap the relay at the
        # network latency. No MULTI: a batch may span several cluster nodes, and a partly
        # applied batch only means duplicates after the retry.
        pipe = self._redis.pipeline(transaction=False)
        for row in rows:
            try:
                headers = json.loads(row["headers"]) if row["headers"] else {}
                fields = entry_fields(
                    event_id=row["id"],
                    event_type=row["event_type"],
                    aggregate_id=row["aggregate_id"],
                    payload=row["payload"],
                    occurred_at=row["created_at"],
                    headers=headers,
                )
                stream = stream_for(row["aggregate_type"])
            except (ValueError, TypeError, AttributeError) as err:
                # No retry makes this row publishable: it fails alone.
                failed[row["id"]] = repr(err)
                continue
            pipe.xadd(stream, fields, maxlen=self._maxlen, approximate=True)
            sent.append(row["id"])
        if sent:
            # Per-command errors come back in the results (a key of the wrong type refuses one
            # entry); a connection error still raises and fails the whole batch.
            results = await pipe.execute(raise_on_error=False)
            for row_id, result in zip(sent, results, strict=True):
                if isinstance(result, Exception):
                    if isinstance(result, RedisConnectionError | RedisTimeoutError | OSError):
                        raise result
                    failed[row_id] = f"{type(result).__name__}: {result}"
        return failed

    async def _record_row_failure(self, conn: asyncpg.Connection, row_id: int, error: str) -> None:
        """Counts one row's own failure, parking it at the limit."""
        self.row_failures += 1
        parked, failures = await conn.fetchrow(
            _RECORD_ROW_FAILURE, row_id, error[:1000], self._max_row_failures
        )
        if parked:
            self.parked += 1
            logger.error(
                "parked an outbox row that failed %d times; the rows behind it go on",
                failures,
                extra={"outbox_id": row_id, "error": error[:200]},
            )
        else:
            logger.warning(
                "an outbox row failed to publish (%d of %d)",
                failures,
                self._max_row_failures,
                extra={"outbox_id": row_id, "error": error[:200]},
            )

    async def _record_failure(
        self, conn: asyncpg.Connection, ids: list[int], err: Exception
    ) -> None:
        """Counts the failed attempt on the rows, best effort: the error is raised regardless."""
        try:
            await conn.execute(_RECORD_FAILURE, ids, repr(err)[:1000])
        except Exception:
            logger.warning("could not record the publish failure", exc_info=True)

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, but returns early when stop() is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def main() -> None:
    """Runs the relay alone until SIGTERM or SIGINT (``python -m order_svc.relay``)."""
    settings = Settings.from_env("order")
    relay_settings = RelaySettings.from_env(os.environ)
    configure_logging("relay", settings.log_level, settings.log_format)
    async with open_stores(settings.stores) as stores:
        assert stores.pool is not None and stores.redis is not None
        relay = OutboxRelay.configured(stores.pool, stores.redis, relay_settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop)
        logger.info("outbox relay running", extra={"batch_size": relay_settings.batch_size})
        announce("relay", 0)
        await relay.run()
        logger.info(
            "outbox relay stopped",
            extra={"published": relay.published, "batches": relay.batches, "errors": relay.errors},
        )


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
