"""The ``driver_offers`` table: making offers, and answering them in one transaction each.

Accepting is the one place where two couriers, an expiry and an operator may race for an
order. It is one PostgreSQL transaction: the offer goes from pending (and unexpired, and the
caller's) to accepted, the courier's load goes up within their cap, and the order gets its
courier through the order service's own change (:func:`order_svc.changes.assign_courier_in`:
the state machine's checks, history, outbox event and notifications) only if it has none.
Whatever fails, nothing of it stays. The partial unique indexes of migration 0004 (one pending
offer per order and per courier, one accepted offer per order) hold the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from matching_svc.domain.offers import NOT_PENDING_REASONS, Offer, OfferStatus
from matching_svc.domain.stacking import Carried
from matching_svc.store.jobs import READY_IN_S
from mesh.errors import DomainError, FailedPrecondition, NotFound
from order_svc.changes import assign_courier_in
from order_svc.domain.orders import Order
from order_svc.store.orders import OrderStore

_COLUMNS = """
    id::text AS offer_id, order_id::text, driver_id::text, status, attempt, score,
    score_factors, stacked, offered_at, expires_at, responded_at, decline_reason
"""

# The unique index a conflicting offer trips, and what it means.
_CONFLICTS = {
    "driver_offers_one_pending_per_order": (
        "the order already has a pending offer",
        "ORDER_HAS_PENDING_OFFER",
    ),
    "driver_offers_one_pending_per_driver": (
        "the courier already has a pending offer",
        "DRIVER_HAS_PENDING_OFFER",
    ),
}


STACKED_TITLE = "Your courier has another drop"
STACKED_BODY = (
    "Your courier is also delivering another order nearby on the way; it adds a few minutes "
    "at most."
)


@dataclass(frozen=True, slots=True)
class CourierStats:
    """What scoring needs to know about a courier besides where they are."""

    rating: float | None
    active_orders: int
    max_active_orders: int
    #: Offers answered (accepted, declined or let expire) in the window, and accepted.
    answered: int
    accepted: int
    #: Holding another order's pending offer right now.
    has_pending_offer: bool = False


def _offer(row: asyncpg.Record) -> Offer:
    raw = row["score_factors"]
    factors = json.loads(raw) if isinstance(raw, str) else (raw or {})
    return Offer(
        offer_id=row["offer_id"],
        order_id=row["order_id"],
        driver_id=row["driver_id"],
        status=OfferStatus(row["status"]),
        attempt=row["attempt"],
        score=row["score"],
        factors={name: (float(v), float(w)) for name, (v, w) in factors.items()},
        stacked=row["stacked"],
        offered_at=row["offered_at"],
        expires_at=row["expires_at"],
        responded_at=row["responded_at"],
        decline_reason=row["decline_reason"],
    )


class OfferStore:
    """Offers in PostgreSQL, the system of record for who was offered what."""

    def __init__(self, pool: asyncpg.Pool, orders: OrderStore) -> None:
        self._pool = pool
        self._orders = orders

    async def create(
        self,
        order_id: str,
        driver_id: str,
        *,
        attempt: int,
        ttl_s: float,
        score: float | None = None,
        factors: dict[str, tuple[float, float]] | None = None,
        stacked: bool = False,
        conn: asyncpg.Connection | None = None,
    ) -> Offer:
        """Offers the order to the courier until ``ttl_s`` from now (in ``conn``'s transaction
        when given).

        Raises FAILED_PRECONDITION when the order or the courier already has a pending offer.
        """
        try:
            row = await (conn or self._pool).fetchrow(
                f"""
                INSERT INTO driver_offers (order_id, driver_id, attempt, score, score_factors,
                                           stacked, offered_at, expires_at)
                VALUES ($1::uuid, $2::uuid, $3, $4, $5::jsonb, $6, now(),
                        now() + make_interval(secs => $7))
                RETURNING {_COLUMNS}
                """,
                order_id,
                driver_id,
                attempt,
                score,
                json.dumps(factors or {}),
                stacked,
                ttl_s,
            )
        except asyncpg.UniqueViolationError as exc:
            message, reason = _CONFLICTS.get(
                exc.constraint_name or "", ("a conflicting offer exists", "OFFER_CONFLICT")
            )
            raise FailedPrecondition(message, reason=reason) from None
        assert row is not None
        return _offer(row)

    async def get(self, offer_id: str) -> Offer | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM driver_offers WHERE id = $1::uuid", offer_id
        )
        return _offer(row) if row else None

    async def accept(self, offer_id: str, driver_id: str) -> tuple[Offer, Order]:
        """The courier takes the offer: offer, load and order change together or not at all.

        Raises NOT_FOUND when the offer is unknown or another courier's, FAILED_PRECONDITION
        when it is no longer pending (``OFFER_EXPIRED``, ``OFFER_ALREADY_ACCEPTED``, ...),
        when the courier is at their cap (``DRIVER_AT_CAPACITY``), or when the order cannot
        take this courier (``COURIER_ALREADY_ASSIGNED``, ``ILLEGAL_TRANSITION``: the offer is
        then withdrawn, as nobody can accept it any more).
        """
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"""
                    UPDATE driver_offers SET status = 'accepted', responded_at = now()
                     WHERE id = $1::uuid AND driver_id = $2::uuid
                       AND status = 'pending' AND expires_at > now()
                    RETURNING {_COLUMNS}
                    """,
                    offer_id,
                    driver_id,
                )
                if row is None:
                    raise await self._refusal(conn, offer_id, driver_id)
                offer = _offer(row)
                # Locks in the order order_svc takes them (the order, then its couriers), so
                # an operator's change of the same order and courier waits instead of
                # deadlocking.
                await self._orders.get(offer.order_id, conn=conn, lock=True)
                # The courier's row stays locked to the end: two accepts of one courier (for
                # two orders) cannot both pass the cap. The order's change raises the load.
                room = await conn.fetchval(
                    "SELECT active_order_count < max_active_orders FROM drivers"
                    " WHERE id = $1::uuid FOR UPDATE",
                    driver_id,
                )
                if not room:
                    raise FailedPrecondition(
                        "the courier carries as many orders as allowed",
                        reason="DRIVER_AT_CAPACITY",
                    )
                order = await assign_courier_in(
                    conn,
                    self._orders,
                    offer.order_id,
                    driver_id,
                    reason=f"offer {offer_id}",
                    now=datetime.now(UTC),
                    # The courier took the order: the history says so.
                    actor_id=driver_id,
                    actor_role="driver",
                )
                await self._tell_stacked(conn, driver_id)
                await conn.execute(
                    "UPDATE dispatch_jobs SET state = 'assigned' WHERE order_id = $1::uuid",
                    offer.order_id,
                )
        except FailedPrecondition as exc:
            if exc.reason in ("COURIER_ALREADY_ASSIGNED", "ILLEGAL_TRANSITION"):
                await self._withdraw(offer_id)
            raise
        return offer, order

    async def _tell_stacked(self, conn: asyncpg.Connection, driver_id: str) -> None:
        """A courier now carrying more than one order: each of those customers hears that
        their courier has another drop on the way (in the accept's transaction)."""
        await conn.execute(
            """
            WITH carried AS (
                SELECT id, customer_id FROM orders
                 WHERE driver_id = $1::uuid AND status NOT IN ('delivered', 'cancelled'))
            INSERT INTO notifications (recipient_id, order_id, type, title, body, data)
            SELECT c.customer_id, c.id, 'courier_has_another_drop', $2, $3,
                   jsonb_build_object('orders_carried', (SELECT count(*) FROM carried))
              FROM carried c
             WHERE c.customer_id IS NOT NULL  -- an account deleted since: nobody to tell
               AND (SELECT count(*) FROM carried) > 1
            """,
            driver_id,
            STACKED_TITLE,
            STACKED_BODY,
        )

    async def decline(self, offer_id: str, driver_id: str, reason: str | None) -> Offer:
        """The courier turns the offer down (while it is pending and unexpired)."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"""
                UPDATE driver_offers
                   SET status = 'declined', responded_at = now(), decline_reason = $3
                 WHERE id = $1::uuid AND driver_id = $2::uuid
                   AND status = 'pending' AND expires_at > now()
                RETURNING {_COLUMNS}
                """,
                offer_id,
                driver_id,
                reason,
            )
            if row is None:
                raise await self._refusal(conn, offer_id, driver_id)
        return _offer(row)

    async def expire_due(self, limit: int = 500) -> list[Offer]:
        """Marks pending offers past their time expired; returns them (oldest first).

        Safe beside other instances (SKIP LOCKED) and beside answers in flight: an offer being
        accepted is either accepted first (and not expired) or expired first (and the accept
        refused with OFFER_EXPIRED).
        """
        rows = await self._pool.fetch(
            f"""
            UPDATE driver_offers SET status = 'expired', responded_at = expires_at
             WHERE id IN (SELECT id FROM driver_offers
                           WHERE status = 'pending' AND expires_at <= now()
                           ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING {_COLUMNS}
            """,
            limit,
        )
        return sorted((_offer(r) for r in rows), key=lambda o: o.expires_at)

    async def pending_for(self, driver_id: str) -> list[Offer]:
        """The courier's pending, unexpired offers (at most one, by the unique index)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM driver_offers"
            " WHERE driver_id = $1::uuid AND status = 'pending' AND expires_at > now()",
            driver_id,
        )
        return [_offer(r) for r in rows]

    async def for_order(self, order_id: str) -> list[Offer]:
        """Every offer of the order, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM driver_offers WHERE order_id = $1::uuid ORDER BY offered_at",
            order_id,
        )
        return [_offer(r) for r in rows]

    async def answered_by(self, order_id: str) -> set[str]:
        """The couriers who declined this order's offer, let it expire, or accepted it and
        were taken off it since: not asked again."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT driver_id::text FROM driver_offers"
            " WHERE order_id = $1::uuid AND status IN ('declined', 'expired', 'accepted')",
            order_id,
        )
        return {r["driver_id"] for r in rows}

    async def stats(self, driver_ids: list[str], window_s: float) -> dict[str, CourierStats]:
        """Rating, load and answered offers in the window of each courier, by id."""
        rows = await self._pool.fetch(
            """
            SELECT d.id::text AS driver_id, d.rating_avg::float8 AS rating,
                   d.active_order_count AS active, d.max_active_orders AS cap,
                   count(o.id) AS answered,
                   count(o.id) FILTER (WHERE o.status = 'accepted') AS accepted,
                   EXISTS (SELECT 1 FROM driver_offers p
                            WHERE p.driver_id = d.id AND p.status = 'pending'
                              AND p.expires_at > now()) AS pending
              FROM drivers d
              LEFT JOIN driver_offers o
                ON o.driver_id = d.id
               AND o.offered_at > now() - make_interval(secs => $2)
               AND o.status IN ('accepted', 'declined', 'expired')
             WHERE d.id = ANY($1::uuid[])
             GROUP BY d.id
            """,
            driver_ids,
            window_s,
        )
        return {
            r["driver_id"]: CourierStats(
                r["rating"], r["active"], r["cap"], r["answered"], r["accepted"], r["pending"]
            )
            for r in rows
        }

    async def carried(self, driver_ids: list[str]) -> dict[str, list[Carried]]:
        """The orders each courier carries now (assigned and not yet delivered), by courier:
        the pickup while it is still to make (and when its food is expected ready), and the
        drop-off."""
        rows = await self._pool.fetch(
            f"""
            SELECT o.id::text AS order_id, o.driver_id::text, o.status, m.lat, m.lng,
                   o.delivery_lat, o.delivery_lng,
                   {READY_IN_S} AS ready_in_s
              FROM orders o JOIN merchants m ON m.id = o.merchant_id
             WHERE o.driver_id = ANY($1::uuid[])
               AND o.status NOT IN ('delivered', 'cancelled')
             ORDER BY o.assigned_at, o.id
            """,
            driver_ids,
        )
        found: dict[str, list[Carried]] = {}
        for r in rows:
            pickup = None if r["status"] == "picked_up" else (r["lat"], r["lng"])
            found.setdefault(r["driver_id"], []).append(
                Carried(
                    r["order_id"],
                    pickup,
                    (r["delivery_lat"], r["delivery_lng"]),
                    r["ready_in_s"],
                )
            )
        return found

    async def withdraw_for_order(self, order_id: str) -> list[Offer]:
        """Withdraws the order's pending offer (the order was cancelled or given a courier)."""
        rows = await self._pool.fetch(
            f"""
            UPDATE driver_offers SET status = 'withdrawn', responded_at = now()
             WHERE order_id = $1::uuid AND status = 'pending'
            RETURNING {_COLUMNS}
            """,
            order_id,
        )
        return [_offer(r) for r in rows]

    async def _withdraw(self, offer_id: str) -> None:
        await self._pool.execute(
            "UPDATE driver_offers SET status = 'withdrawn', responded_at = now()"
            " WHERE id = $1::uuid AND status = 'pending'",
            offer_id,
        )

    async def _refusal(self, conn: Any, offer_id: str, driver_id: str) -> DomainError:
        """Why an answer to the offer was refused: the error to raise."""
        row = await conn.fetchrow(
            "SELECT status, driver_id::text, expires_at <= now() AS lapsed"
            " FROM driver_offers WHERE id = $1::uuid",
            offer_id,
        )
        if row is None or row["driver_id"] != driver_id:
            # Another courier's offer is none of the caller's business.
            return NotFound(f"offer {offer_id} not found", reason="OFFER_NOT_FOUND")
        status = OfferStatus(row["status"])
        if status is OfferStatus.PENDING and row["lapsed"]:
            status = OfferStatus.EXPIRED
        return FailedPrecondition(
            f"offer {offer_id} is {status.value}", reason=NOT_PENDING_REASONS[status]
        )
