"""``dispatch_jobs``: the durable state of each order's search for a courier.

A matching process that dies loses nothing: the job says where the search stands, the pending
offer is a row with its expiry, and whoever runs next picks up the due jobs and expired offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from order_svc.changes import announce_no_courier_in
from order_svc.domain.orders import ASSIGNABLE
from order_svc.store.orders import OrderStore

#: Order statuses in which a courier may be found.
ASSIGNABLE_STATUSES = frozenset(s.value for s in ASSIGNABLE)
#: A job a step may take (the alias ``j`` is dispatch_jobs): due, or with its offer answered
#: (or its step cut short), and no live lease.
_TAKEABLE = """
    (j.lease_expires_at IS NULL OR j.lease_expires_at < now())
    AND ((j.state IN ('queued', 'waiting_for_retry') AND j.next_attempt_at <= now())
         OR (j.state IN ('searching', 'offered')
             AND NOT EXISTS (SELECT 1 FROM driver_offers o
                              WHERE o.order_id = j.order_id AND o.status = 'pending')))
"""
_RELEASED = "lease_owner = NULL, lease_expires_at = NULL"
#: SQL: when the food of order ``o`` is expected ready, in seconds from now (0 once it is, or
#: when it is overdue): confirmation plus the shop's preparation estimate.
READY_IN_S = """
    CASE WHEN o.status IN ('ready_for_pickup', 'picked_up') THEN 0
         ELSE greatest(0, extract(epoch FROM coalesce(o.confirmed_at, now())
                                  + make_interval(secs => coalesce(o.estimated_prep_seconds, 0))
                                  - now()))
    END::float8
"""


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a dispatch step needs to know about an order and its job."""

    order_id: str
    customer_id: str
    merchant_owner_id: str
    order_status: str
    driver_id: str | None
    pickup_lat: float
    pickup_lng: float
    dropoff_lat: float
    dropoff_lng: float
    #: When the food is expected ready, in seconds from now (0 when it is, or is overdue).
    ready_in_s: float
    state: str
    #: Offers made (or searches that found nobody) in the current round.
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    updated_at: datetime

    @property
    def dispatchable(self) -> bool:
        return self.driver_id is None and self.order_status in ASSIGNABLE_STATUSES


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

    async def adopt_missed(
        self, max_attempts: int, lead_s: float, quiet_s: float, limit: int = 100
    ) -> list[str]:
        """Creates the jobs of orders that wait for a courier without one: their confirmation
        event never reached matching (published, then lost with Redis's data, or dead-lettered).

        Only orders unchanged for ``quiet_s`` are taken, so the event path does its own work;
        each job is due as the event would have made it (confirmation plus preparation minus
        ``lead_s``; at once for food that is ready). Returns the orders adopted.
        """
        rows = await self._pool.fetch(
            """
            INSERT INTO dispatch_jobs (order_id, next_attempt_at, max_attempts)
            SELECT o.id,
                   CASE WHEN o.status = 'ready_for_pickup' OR o.confirmed_at IS NULL THEN now()
                        ELSE o.confirmed_at + make_interval(
                                 secs => greatest(0, coalesce(o.estimated_prep_seconds, 0) - $2))
                   END,
                   $1
              FROM orders o
             WHERE o.status IN ('confirmed', 'preparing', 'ready_for_pickup')
               AND o.driver_id IS NULL
               AND o.updated_at < now() - make_interval(secs => $3)
               AND NOT EXISTS (SELECT 1 FROM dispatch_jobs j WHERE j.order_id = o.id)
             ORDER BY o.updated_at
             LIMIT $4
            ON CONFLICT (order_id) DO NOTHING
            RETURNING order_id::text
            """,
            max_attempts,
            lead_s,
            quiet_s,
            limit,
        )
        return [r["order_id"] for r in rows]

    async def context(self, order_id: str) -> JobContext | None:
        row = await self._pool.fetchrow(
            f"""
            SELECT o.id::text AS order_id, o.customer_id::text,
                   m.owner_user_id::text AS merchant_owner_id, o.status AS order_status,
                   o.driver_id::text, m.lat AS pickup_lat, m.lng AS pickup_lng,
                   o.delivery_lat AS dropoff_lat, o.delivery_lng AS dropoff_lng,
                   {READY_IN_S} AS ready_in_s,
                   j.state, j.attempts, j.max_attempts, j.next_attempt_at, j.updated_at
              FROM dispatch_jobs j
              JOIN orders o ON o.id = j.order_id
              JOIN merchants m ON m.id = o.merchant_id
             WHERE j.order_id = $1::uuid
            """,
            order_id,
        )
        return JobContext(**dict(row)) if row else None

    async def due(self, limit: int) -> list[str]:
        """Orders whose job a step may take now (see :meth:`take`), oldest due first."""
        rows = await self._pool.fetch(
            f"SELECT j.order_id::text FROM dispatch_jobs j WHERE {_TAKEABLE}"
            " ORDER BY j.next_attempt_at LIMIT $1",
            limit,
        )
        return [r["order_id"] for r in rows]

    async def take(self, order_id: str, owner: str, lease_s: float) -> bool:
        """Leases the order's job to one step, if it is takeable; False if it is not (or
        another step holds it). Every step ends by :meth:`release` (or by a state change that
        releases); a step that dies leaves a lease that lapses after ``lease_s``.

        Takeable: queued or waiting for a retry and due, or searching or offered with no
        pending offer (its offer was answered, or a step was cut short).
        """
        taken = await self._pool.fetchval(
            f"""
            UPDATE dispatch_jobs j
               SET state = 'searching', lease_owner = $2,
                   lease_expires_at = now() + make_interval(secs => $3)
             WHERE j.order_id = $1::uuid AND {_TAKEABLE}
            RETURNING true
            """,
            order_id,
            owner,
            lease_s,
        )
        return bool(taken)

    async def release(self, order_id: str, owner: str) -> None:
        """Gives up ``owner``'s lease if it still holds it (a step that ended early)."""
        await self._pool.execute(
            "UPDATE dispatch_jobs SET lease_owner = NULL, lease_expires_at = NULL,"
            "       state = CASE WHEN state = 'searching' THEN 'queued' ELSE state END"
            " WHERE order_id = $1::uuid AND lease_owner = $2",
            order_id,
            owner,
        )

    async def reopen(self, order_id: str) -> None:
        """The order lost its courier: dispatch starts again, a fresh round, now."""
        await self._pool.execute(
            "UPDATE dispatch_jobs SET state = 'queued', attempts = 0, next_attempt_at = now(),"
            "       lease_owner = NULL, lease_expires_at = NULL"
            " WHERE order_id = $1::uuid",
            order_id,
        )

    async def hurry(self, order_id: str) -> None:
        """A job waiting for its time (the food is ready early) becomes due now."""
        await self._pool.execute(
            "UPDATE dispatch_jobs SET next_attempt_at = now()"
            " WHERE order_id = $1::uuid AND state IN ('queued', 'waiting_for_retry')"
            "   AND next_attempt_at > now()",
            order_id,
        )

    async def due_now(self, order_id: str) -> None:
        """An operator's retry: a waiting or queued job becomes due at once, a fresh round.

        A job with an offer out or a step running is left alone; a closed one is reopened
        (the step then closes it again unless the order still needs a courier).
        """
        await self._pool.execute(
            "UPDATE dispatch_jobs SET next_attempt_at = now(), attempts = 0,"
            "       state = CASE WHEN state IN ('assigned', 'cancelled') THEN 'queued'"
            "                    ELSE state END"
            " WHERE order_id = $1::uuid AND state NOT IN ('offered', 'searching')",
            order_id,
        )

    async def offered(self, conn: asyncpg.Connection, order_id: str, attempts: int) -> None:
        await conn.execute(
            "UPDATE dispatch_jobs SET state = 'offered', attempts = $2, last_error = NULL,"
            f"       {_RELEASED} WHERE order_id = $1::uuid",
            order_id,
            attempts,
        )

    async def search_again(
        self, order_id: str, attempts: int, after_s: float, error: str | None
    ) -> None:
        """Nobody to offer to right now: try again in ``after_s``."""
        await self._pool.execute(
            f"""
            UPDATE dispatch_jobs
               SET state = 'waiting_for_retry', attempts = $2, last_error = $4,
                   next_attempt_at = now() + make_interval(secs => $3), {_RELEASED}
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
        """Every attempt of this round failed: tell the customer, announce it (tracking shows
        it to the order's watchers), wait for a later round."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"""
                UPDATE dispatch_jobs
                   SET state = 'waiting_for_retry', attempts = 0,
                       last_error = 'no courier accepted',
                       next_attempt_at = now() + make_interval(secs => $2), {_RELEASED}
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
            await announce_no_courier_in(
                conn, OrderStore(self._pool), ctx.order_id, now=datetime.now(UTC)
            )

    async def close(self, order_id: str, state: str) -> None:
        """Ends the job: the order has a courier (assigned) or is past needing one."""
        await self._pool.execute(
            f"UPDATE dispatch_jobs SET state = $2, {_RELEASED} WHERE order_id = $1::uuid",
            order_id,
            state,
        )
