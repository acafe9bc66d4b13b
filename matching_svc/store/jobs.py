"""``dispatch_jobs``: the durable state of each order's search for a courier.

A matching process that dies loses nothing: the job says where the search stands, the pending
offer is a row with its expiry, and whoever runs next picks up the due jobs and expired offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

#: Order states in which a courier may still be found (order_svc's ASSIGNABLE).
_ASSIGNABLE = ("confirmed", "preparing", "ready_for_pickup")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a dispatch step needs to know about an order and its job."""

    order_id: str
    customer_id: str
    order_status: str
    driver_id: str | None
    pickup_lat: float
    pickup_lng: float
    state: str
    #: Offers made (or searches that found nobody) in the current round.
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    updated_at: datetime

    @property
    def dispatchable(self) -> bool:
        return self.driver_id is None and self.order_status in _ASSIGNABLE


class JobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ensure(self, order_id: str, due_at: datetime | None, max_attempts: int) -> bool:
        """Creates the order's job, due at ``due_at`` (now when None).

        False if it existed, or if the order does not (an old event of an order since deleted).
        """
        made = await self._pool.fetchval(
            """
            INSERT INTO dispatch_jobs (order_id, next_attempt_at, max_attempts)
            SELECT id, coalesce($2, now()), $3 FROM orders WHERE id = $1::uuid
            ON CONFLICT (order_id) DO NOTHING
            RETURNING true
            """,
            order_id,
            due_at,
            max_attempts,
        )
        return bool(made)

    async def context(self, order_id: str) -> JobContext | None:
        row = await self._pool.fetchrow(
            """
            SELECT o.id::text AS order_id, o.customer_id::text, o.status AS order_status,
                   o.driver_id::text, m.lat AS pickup_lat, m.lng AS pickup_lng,
                   j.state, j.attempts, j.max_attempts, j.next_attempt_at, j.updated_at
              FROM dispatch_jobs j
              JOIN orders o ON o.id = j.order_id
              JOIN merchants m ON m.id = o.merchant_id
             WHERE j.order_id = $1::uuid
            """,
            order_id,
        )
        return JobContext(**dict(row)) if row else None

    async def claim_due(self, limit: int, stale_s: float = 5.0) -> list[str]:
        """Orders whose job is due now (queued or waiting for a retry), marked searching.

        Also jobs left searching or offered for ``stale_s`` without a pending offer. Jobs
        another instance claimed in the same instant are skipped (SKIP LOCKED).
        """
        rows = await self._pool.fetch(
            """
            UPDATE dispatch_jobs SET state = 'searching'
             WHERE order_id IN (
                   SELECT j.order_id FROM dispatch_jobs j
                    WHERE (j.state IN ('queued', 'waiting_for_retry')
                           AND j.next_attempt_at <= now())
                       -- A step that never finished (its process died), or an answered offer
                       -- whose next step did not run: no pending offer, nothing due.
                       OR (j.state IN ('searching', 'offered')
                           AND j.updated_at < now() - make_interval(secs => $2)
                           AND NOT EXISTS (SELECT 1 FROM driver_offers o
                                            WHERE o.order_id = j.order_id
                                              AND o.status = 'pending'))
                    ORDER BY j.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING order_id::text
            """,
            limit,
            stale_s,
        )
        return [r["order_id"] for r in rows]

    async def hurry(self, order_id: str) -> None:
        """A job still waiting for its time (the food is ready early) becomes due now."""
        await self._pool.execute(
            "UPDATE dispatch_jobs SET next_attempt_at = now()"
            " WHERE order_id = $1::uuid AND state = 'queued' AND next_attempt_at > now()",
            order_id,
        )

    async def due_now(self, order_id: str) -> None:
        """An operator's retry: a waiting or queued job becomes due at once."""
        await self._pool.execute(
            "UPDATE dispatch_jobs SET next_attempt_at = now(), attempts = 0,"
            "       state = CASE WHEN state IN ('exhausted', 'cancelled') THEN 'queued'"
            "                    ELSE state END"
            " WHERE order_id = $1::uuid AND state NOT IN ('assigned', 'offered', 'searching')",
            order_id,
        )

    async def offered(self, conn: asyncpg.Connection, order_id: str, attempts: int) -> None:
        await conn.execute(
            "UPDATE dispatch_jobs SET state = 'offered', attempts = $2, last_error = NULL"
            " WHERE order_id = $1::uuid",
            order_id,
            attempts,
        )

    async def search_again(
        self, order_id: str, attempts: int, after_s: float, error: str | None
    ) -> None:
        """Nobody to offer to right now: try again in ``after_s``."""
        await self._pool.execute(
            """
            UPDATE dispatch_jobs
               SET state = 'waiting_for_retry', attempts = $2, last_error = $4,
                   next_attempt_at = now() + make_interval(secs => $3)
             WHERE order_id = $1::uuid
            """,
            order_id,
            attempts,
            after_s,
            error,
        )

    async def give_up_round(
        self, ctx: JobContext, retry_after_s: float, title: str, body: str
    ) -> None:
        """Every attempt of this round failed: tell the customer, wait for a later round."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                UPDATE dispatch_jobs
                   SET state = 'waiting_for_retry', attempts = 0,
                       last_error = 'no courier accepted',
                       next_attempt_at = now() + make_interval(secs => $2)
                 WHERE order_id = $1::uuid
                """,
                ctx.order_id,
                retry_after_s,
            )
            await conn.execute(
                "INSERT INTO notifications (recipient_id, order_id, type, title, body)"
                " VALUES ($1::uuid, $2::uuid, 'no_courier_available', $3, $4)",
                ctx.customer_id,
                ctx.order_id,
                title,
                body,
            )

    async def close(self, order_id: str, state: str) -> None:
        """Ends the job: the order has a courier (assigned) or is past needing one."""
        await self._pool.execute(
            "UPDATE dispatch_jobs SET state = $2 WHERE order_id = $1::uuid", order_id, state
        )
