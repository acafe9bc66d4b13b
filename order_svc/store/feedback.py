"""Problem reports, ratings, the notification feed and retention in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from mesh.errors import AlreadyExists


@dataclass(frozen=True, slots=True)
class ProblemReport:
    """An append-only complaint about an order."""

    id: str
    order_id: str
    reporter_id: str | None
    reporter_role: str
    reason: str
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Rating:
    """A 1-5 score one party gave another after a delivery."""

    id: str
    order_id: str
    rater_id: str
    rater_role: str
    target: str
    target_id: str
    score: int
    comment: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Notification:
    """One entry of a user's feed."""

    id: int
    recipient_id: str
    order_id: str | None
    type: str
    title: str
    body: str
    read: bool
    created_at: datetime


#: The idempotency-key operation of RateOrder.
RATE_ORDER = "rate_order"

# Where each rating target's average lives.
_AGGREGATES = {"driver": "drivers", "merchant": "merchants", "customer": "users"}


class FeedbackStore:
    """``problem_reports``, ``ratings``, ``notifications`` and retention."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def report_problem(
        self,
        *,
        order_id: str,
        reporter_id: str | None,
        reporter_role: str,
        reason: str,
        description: str,
        event_type: str,
        payload: bytes,
        key: tuple[str, str, bytes] | None = None,
    ) -> ProblemReport | None:
        """Appends a report and its outbox event in one statement.

        With ``key`` (caller uuid, request id, request hash) a retry appends nothing and
        returns ``None``; the caller then reads the first report with :meth:`problem_for_key`.
        """
        row = await self._pool.fetchrow(
            """
            WITH report_id AS (SELECT gen_random_uuid() AS id), claim AS (
                INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash,
                                              status, response, resource_id, completed_at)
                SELECT $8::uuid, 'report_problem', $9, $10, 'completed', ''::bytea, id, now()
                  FROM report_id WHERE $9::text <> ''
                ON CONFLICT (caller_id, operation, request_id) DO NOTHING
                RETURNING 1
            ), report AS (
                INSERT INTO problem_reports (id, order_id, reporter_id, reporter_role, reason,
                                             description)
                SELECT id, $1::uuid, $2::uuid, $3, $4, $5 FROM report_id
                 WHERE $9::text = '' OR EXISTS (SELECT 1 FROM claim)
                RETURNING id::text AS id, order_id::text AS order_id,
                          reporter_id::text AS reporter_id, reporter_role, reason, description,
                          created_at
            ), event AS (
                INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                SELECT 'order', order_id::uuid, $6, $7 FROM report
            )
            SELECT * FROM report
            """,
            order_id,
            reporter_id,
            reporter_role,
            reason,
            description,
            event_type,
            payload,
            key[0] if key else None,
            key[1] if key else "",
            key[2] if key else b"",
        )
        return ProblemReport(**dict(row)) if row else None

    async def problem_for_key(self, caller_id: str, request_id: str) -> tuple[bytes, ProblemReport]:
        """The request hash and the report a remembered ReportProblem request id made."""
        row = await self._pool.fetchrow(
            """
            SELECT k.request_hash, p.id::text AS id, p.order_id::text AS order_id,
                   p.reporter_id::text AS reporter_id, p.reporter_role, p.reason,
                   p.description, p.created_at
              FROM idempotency_keys k JOIN problem_reports p ON p.id = k.resource_id
             WHERE k.caller_id = $1::uuid AND k.operation = 'report_problem'
               AND k.request_id = $2
            """,
            caller_id,
            request_id,
        )
        assert row is not None, "a lost claim has a winner"
        fields = dict(row)
        return bytes(fields.pop("request_hash")), ProblemReport(**fields)

    async def rating_of(self, order_id: str, rater_role: str, target: str) -> Rating | None:
        """The rating a ``rater_role`` already gave ``target`` for ``order_id``, if any."""
        row = await self._pool.fetchrow(
            """
            SELECT id::text AS id, order_id::text AS order_id, rater_id::text AS rater_id,
                   rater_role, target, target_id::text AS target_id, score,
                   coalesce(comment, '') AS comment, created_at
              FROM ratings WHERE order_id = $1::uuid AND rater_role = $2 AND target = $3
            """,
            order_id,
            rater_role,
            target,
        )
        return Rating(**dict(row)) if row else None

    async def rate(
        self,
        *,
        order_id: str,
        rater_id: str,
        rater_role: str,
        target: str,
        target_id: str,
        score: int,
        comment: str,
        key: tuple[str, str, bytes] | None = None,
    ) -> Rating:
        """Records a rating once per order and direction (rater role to target) and refreshes
        the target's average: a merchant's counts its customers' ratings only (Merchant's
        ``rating_average``), a courier's and a customer's every rating they received.

        With ``key`` (caller uuid, request id, request hash) the request id is remembered in the
        same transaction, naming the rating, so a retry can be told from a second rating.
        ALREADY_EXISTS if the direction was rated already.
        """
        table = _AGGREGATES[target]
        async with self._pool.acquire() as conn, conn.transaction():
            # Lock the target first: concurrent ratings of one courier then recompute the
            # average one after another, each seeing the other's committed row.
            await conn.execute(f"SELECT 1 FROM {table} WHERE id = $1::uuid FOR UPDATE", target_id)
            try:
                row = await conn.fetchrow(
                    """
                    INSERT INTO ratings (order_id, rater_id, rater_role, target, target_id,
                                         score, comment)
                    VALUES ($1::uuid, $2::uuid, $3, $4, $5::uuid, $6, nullif($7, ''))
                    RETURNING id::text AS id, order_id::text AS order_id,
                              rater_id::text AS rater_id, rater_role, target,
                              target_id::text AS target_id, score,
                              coalesce(comment, '') AS comment, created_at
                    """,
                    order_id,
                    rater_id,
                    rater_role,
                    target,
                    target_id,
                    score,
                    comment,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(
                    f"this order's {target} was rated already", reason="ALREADY_RATED"
                ) from None
            assert row is not None
            if key is not None:
                await conn.execute(
                    """
                    INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash,
                                                  status, response, resource_id, completed_at)
                    VALUES ($1::uuid, $2, $3, $4, 'completed', ''::bytea, $5::uuid, now())
                    ON CONFLICT (caller_id, operation, request_id) DO NOTHING
                    """,
                    key[0],
                    RATE_ORDER,
                    key[1],
                    key[2],
                    row["id"],
                )
            await conn.execute(
                f"""
                UPDATE {table} t
                   SET rating_avg = s.avg, rating_count = s.n
                  FROM (SELECT round(avg(score), 2) AS avg, count(*) AS n
                          FROM ratings
                         WHERE target = $2 AND target_id = $1::uuid
                           AND (target <> 'merchant' OR rater_role = 'customer')) s
                 WHERE t.id = $1::uuid
                """,
                target_id,
                target,
            )
        assert row is not None
        return Rating(**dict(row))

    async def notifications(
        self, recipient_id: str, *, unread_only: bool, limit: int, before_id: int | None
    ) -> list[Notification]:
        """The recipient's feed, newest first, keyset-paginated by id."""
        rows = await self._pool.fetch(
            """
            SELECT id, recipient_id::text AS recipient_id, order_id::text AS order_id, type,
                   title, body, read_at IS NOT NULL AS read, created_at
              FROM notifications
             WHERE recipient_id = $1::uuid AND ($2::bool IS FALSE OR read_at IS NULL)
               AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4
            """,
            recipient_id,
            unread_only,
            before_id,
            limit,
        )
        return [Notification(**dict(r)) for r in rows]

    async def mark_read(self, recipient_id: str, ids: list[int] | None) -> int:
        """Marks the recipient's ``ids`` (all when ``None``) read; returns how many changed."""
        result = await self._pool.execute(
            """
            UPDATE notifications SET read_at = now()
             WHERE recipient_id = $1::uuid AND read_at IS NULL
               AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
            """,
            recipient_id,
            ids,
        )
        return int(result.split()[-1])

    async def run_retention(self, *, dry_run: bool) -> list[tuple[str, int]]:
        """Deletes what ``retention_policies`` says has expired; returns rows per table."""
        async with self._pool.acquire() as conn, conn.transaction():
            policies = {
                r["table_name"]: r["warm_storage_days"]
                for r in await conn.fetch(
                    "SELECT table_name, warm_storage_days FROM retention_policies"
                )
            }
            statements = {
                "idempotency_keys": "FROM idempotency_keys WHERE expires_at < now()",
                "notifications": "FROM notifications WHERE created_at < now() - make_interval("
                "days => $1)",
                "outbox": "FROM outbox WHERE published_at < now() - make_interval(days => $1)",
            }
            results: list[tuple[str, int]] = []
            for table, where in statements.items():
                days = policies.get(table, 30)
                args = [days] if "$1" in where else []
                if dry_run:
                    count = await conn.fetchval(f"SELECT count(*) {where}", *args)
                else:
                    status = await conn.execute(f"DELETE {where}", *args)
                    count = int(status.split()[-1])
                results.append((table, int(count)))
            if not dry_run:
                await conn.execute(
                    "UPDATE retention_policies SET last_cleanup_at = now()"
                    " WHERE table_name = ANY($1::text[])",
                    list(statements),
                )
        return results
