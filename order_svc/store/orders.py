"""Orders in PostgreSQL: placement and every transition as one statement each.

Each write is a single SQL statement of data-modifying CTEs, so the order row, its lines,
the status history, the outbox event and the notifications commit together or not at all,
in one round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import asyncpg

from order_svc.domain.orders import (
    PREP_OBSERVED_MAX_S,
    PREP_OBSERVED_MIN_S,
    PREP_WEIGHT,
    Order,
    OrderStatus,
    Transition,
)
from order_svc.domain.pricing import PricedLine, PricedOption, PricedOrder

CREATE_ORDER = "create_order"

_ORDER_COLUMNS = """
    o.id::text AS id, o.customer_id::text AS customer_id, o.merchant_id::text AS merchant_id,
    m.owner_user_id::text AS merchant_owner_id, o.driver_id::text AS driver_id, o.status,
    o.version, o.delivery_address, o.delivery_lat, o.delivery_lng, m.lat AS merchant_lat,
    m.lng AS merchant_lng, o.currency_code, o.subtotal_minor, o.delivery_fee_minor, o.tip_minor,
    o.total_minor, coalesce(o.delivery_pin, '') AS delivery_pin, o.handoff_policy,
    o.estimated_prep_seconds, o.estimated_delivery_at, o.created_at, o.updated_at,
    o.confirmed_at, o.ready_at, o.picked_up_at, o.delivered_at, o.cancelled_at, o.cancel_reason,
    o.cancelled_by_role, o.refund_minor, o.cancellation_fee_minor, coalesce(o.note, '') AS note
"""
_FROM = "FROM orders o LEFT JOIN merchants m ON m.id = o.merchant_id"


@dataclass(frozen=True, slots=True)
class NotificationDraft:
    """A notification to insert with a change."""

    recipient_id: str
    type: str
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class Event:
    """An outbox event to insert with a change."""

    event_type: str
    payload: bytes


class Placement(Enum):
    """What :meth:`OrderStore.create` did."""

    PLACED = "placed"
    #: The request id was used before; nothing was written (see :meth:`OrderStore.replay`).
    DUPLICATE = "duplicate"
    #: The menu changed after it was read; nothing was written, price it again.
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """The versions of the merchant and items an order was priced from."""

    merchant_version: int
    #: ``(menu_item_id, updated_at)`` of every item the order names.
    items: tuple[tuple[str, datetime], ...]


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A caller's request id for one operation (AIP-155), with the hash of the request."""

    caller_id: str
    operation: str
    request_id: str
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class IdempotentReplay:
    """A request id seen before: the stored response and the hash of the request that made it."""

    request_hash: bytes
    response: bytes


def order_from_row(row: asyncpg.Record) -> Order:
    """The domain order for a row selected with ``_ORDER_COLUMNS``."""
    return Order(**{**dict(row), "status": OrderStatus(row["status"])})


class OrderStore:
    """The ``orders`` table and what hangs off it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(
        self, order_id: str, *, conn: asyncpg.Connection | None = None, lock: bool = False
    ) -> Order | None:
        """The order with ``order_id``, if any.

        With ``conn``, read in the caller's transaction; with ``lock`` also, the order's row
        stays locked (FOR UPDATE) until that transaction ends.
        """
        sql = f"SELECT {_ORDER_COLUMNS} {_FROM} WHERE o.id = $1::uuid"
        if lock:
            sql += " FOR UPDATE OF o"
        row = await (conn or self._pool).fetchrow(sql, order_id)
        return order_from_row(row) if row else None

    async def lines_of(self, order_ids: Sequence[str]) -> dict[str, list[PricedLine]]:
        """The lines of each of ``order_ids``, with their chosen options, in the order they
        were placed: one query for a whole page of orders. An order without lines is absent."""
        rows = await self._pool.fetch(
            """
            SELECT i.order_id::text AS order_id, i.id, i.menu_item_id::text AS menu_item_id,
                   i.name, i.quantity, i.unit_price_minor, i.line_total_minor,
                   coalesce(i.note, '') AS note,
                   o.option_group_id::text AS option_group_id, o.option_id::text AS option_id,
                   o.group_name, o.name AS option_name, o.price_delta_minor
              FROM order_items i LEFT JOIN order_item_options o ON o.order_item_id = i.id
             WHERE i.order_id = ANY($1::uuid[])
             ORDER BY i.order_id, i.line_no, o.id
            """,
            list(order_ids),
        )
        lines: dict[object, tuple[asyncpg.Record, list[PricedOption]]] = {}
        for row in rows:
            _, options = lines.setdefault(row["id"], (row, []))
            if row["option_name"] is not None:
                options.append(
                    PricedOption(
                        row["option_group_id"] or "",
                        row["option_id"] or "",
                        row["group_name"],
                        row["option_name"],
                        row["price_delta_minor"],
                    )
                )
        by_order: dict[str, list[PricedLine]] = {}
        for row, options in lines.values():
            by_order.setdefault(row["order_id"], []).append(
                PricedLine(
                    menu_item_id=row["menu_item_id"] or "",
                    name=row["name"],
                    quantity=row["quantity"],
                    unit_price_minor=row["unit_price_minor"],
                    options=tuple(options),
                    line_total_minor=row["line_total_minor"],
                    note=row["note"],
                )
            )
        return by_order

    async def seen(self, key: RequestKey) -> tuple[bytes, str | None] | None:
        """The request hash and resource id stored under ``key``, if it is remembered."""
        row = await self._pool.fetchrow(
            """
            SELECT request_hash, resource_id::text AS resource_id FROM idempotency_keys
             WHERE caller_id = $1::uuid AND operation = $2 AND request_id = $3
               AND expires_at > now()
            """,
            key.caller_id,
            key.operation,
            key.request_id,
        )
        return (bytes(row["request_hash"]), row["resource_id"]) if row else None

    async def replay(self, caller_id: str, operation: str, request_id: str) -> IdempotentReplay:
        """The stored outcome of a request id whose claim lost to an earlier one."""
        row = await self._pool.fetchrow(
            """
            SELECT request_hash, response FROM idempotency_keys
             WHERE caller_id = $1::uuid AND operation = $2 AND request_id = $3
            """,
            caller_id,
            operation,
            request_id,
        )
        assert row is not None and row["response"] is not None, "a lost claim has a winner"
        return IdempotentReplay(bytes(row["request_hash"]), bytes(row["response"]))

    async def create(
        self,
        *,
        order_id: str,
        customer_id: str,
        merchant_id: str,
        request_id: str,
        request_hash: bytes,
        response: bytes,
        priced: PricedOrder,
        delivery_address: str,
        delivery_lat: float,
        delivery_lng: float,
        delivery_pin: str,
        handoff_policy: str,
        estimated_prep_seconds: int,
        estimated_delivery_at: datetime,
        note: str,
        now: datetime,
        event: Event,
        notifications: Sequence[NotificationDraft],
        key_ttl_s: int,
        priced_from: PriceVersion,
    ) -> Placement:
        """Places the order unless ``request_id`` was used before or the menu changed.

        The idempotency key is claimed in the same statement: a concurrent request with the
        same key blocks on the key's primary key until this one commits, then finds it taken
        and places nothing (read its outcome with :meth:`replay`). An expired key is taken
        over. Nothing is written either when the merchant or an item changed after
        ``priced_from`` was read (:attr:`Placement.STALE`).
        """
        item_ids = [uuid.uuid4() for _ in priced.lines]
        opt_item, opt_group, opt_option, opt_group_name, opt_name, opt_delta = (
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for item_id, line in zip(item_ids, priced.lines, strict=True):
            for option in line.options:
                opt_item.append(item_id)
                opt_group.append(option.option_group_id)
                opt_option.append(option.option_id)
                opt_group_name.append(option.group_name)
                opt_name.append(option.name)
                opt_delta.append(option.price_delta_minor)
        row = await self._pool.fetchrow(
            _CREATE_SQL,
            customer_id,
            CREATE_ORDER,
            request_id,
            request_hash,
            response,
            order_id,
            now,
            key_ttl_s,
            merchant_id,
            delivery_address,
            delivery_lat,
            delivery_lng,
            priced.currency_code,
            priced.subtotal_minor,
            priced.delivery_fee_minor,
            priced.tip_minor,
            priced.total_minor,
            delivery_pin,
            handoff_policy,
            estimated_prep_seconds,
            estimated_delivery_at,
            note or None,
            item_ids,
            [line.menu_item_id for line in priced.lines],
            [line.name for line in priced.lines],
            [line.quantity for line in priced.lines],
            [line.unit_price_minor for line in priced.lines],
            [line.line_total_minor for line in priced.lines],
            [line.note or None for line in priced.lines],
            opt_item,
            opt_group,
            opt_option,
            opt_group_name,
            opt_name,
            opt_delta,
            event.event_type,
            event.payload,
            [n.recipient_id for n in notifications],
            [n.type for n in notifications],
            [n.title for n in notifications],
            [n.body for n in notifications],
            priced_from.merchant_version,
            [item_id for item_id, _ in priced_from.items],
            [at for _, at in priced_from.items],
        )
        assert row is not None
        if not row["fresh"]:
            return Placement.STALE
        return Placement.PLACED if row["placed"] else Placement.DUPLICATE

    async def apply(
        self,
        order_id: str,
        transition: Transition,
        *,
        actor_id: str | None,
        actor_role: str,
        now: datetime,
        event: Event,
        notifications: Sequence[NotificationDraft],
        reason: str | None = None,
        cancel: tuple[str, str, int, int] | None = None,
        estimated_prep_seconds: int | None = None,
        proof: tuple[str, bytes | None, str | None, float | None, float | None, datetime | None]
        | None = None,
        key: RequestKey | None = None,
        conn: asyncpg.Connection | None = None,
        previous_driver_id: str | None = None,
    ) -> int | None:
        """Applies ``transition`` if the order is still where it was planned from.

        Returns the new version, or ``None`` when a concurrent change won (the caller re-reads
        and reports ABORTED or FAILED_PRECONDITION). With ``conn``, in the caller's transaction.
        """
        sql = _transition_sql(transition.stamps, proof is not None)
        args: list[object] = [
            order_id,
            transition.from_status.value,
            transition.from_version,
            transition.to_status.value,
            transition.driver_id,
            now,
            reason,
            cancel[0] if cancel else None,
            cancel[1] if cancel else None,
            cancel[2] if cancel else None,
            cancel[3] if cancel else None,
            estimated_prep_seconds,
            actor_id,
            actor_role,
            event.event_type,
            event.payload,
            [n.recipient_id for n in notifications],
            [n.type for n in notifications],
            [n.title for n in notifications],
            [n.body for n in notifications],
            key.caller_id if key else None,
            key.operation if key else "",
            key.request_id if key else "",
            key.request_hash if key else b"",
            previous_driver_id,
        ]
        if proof is not None:
            args.extend(proof)
        return await (conn or self._pool).fetchval(sql, *args)

    async def list_for(
        self,
        *,
        column: str | None,
        party_id: str | None,
        statuses: Sequence[str],
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Order]:
        """Orders of one party (``column`` customer_id/merchant owner/driver_id), newest first.

        ``column`` ``None`` lists every order (operators). Keyset pagination on
        ``(created_at, id)``.
        """
        where = ["TRUE"]
        args: list[object] = []
        if column == "merchant_owner":
            args.append(party_id)
            where.append(f"m.owner_user_id = ${len(args)}::uuid")
        elif column is not None:
            args.append(party_id)
            where.append(f"o.{column} = ${len(args)}::uuid")
        if statuses:
            args.append(list(statuses))
            where.append(f"o.status = ANY(${len(args)}::text[])")
        if before is not None:
            args.extend(before)
            where.append(f"(o.created_at, o.id) < (${len(args) - 1}, ${len(args)}::uuid)")
        args.append(limit)
        rows = await self._pool.fetch(
            f"SELECT {_ORDER_COLUMNS} {_FROM} WHERE {' AND '.join(where)}"
            f" ORDER BY o.created_at DESC, o.id DESC LIMIT ${len(args)}",
            *args,
        )
        return [order_from_row(r) for r in rows]

    async def stuck(
        self, *, older_than: datetime, limit: int, after: tuple[datetime, str] | None
    ) -> list[Order]:
        """Active orders unchanged since ``older_than``, longest-stuck first."""
        args: list[object] = [older_than, limit]
        cursor = ""
        if after is not None:
            args.extend(after)
            cursor = "AND (o.updated_at, o.id) > ($3, $4::uuid)"
        rows = await self._pool.fetch(
            f"""
            SELECT {_ORDER_COLUMNS} {_FROM}
             WHERE o.status IN ('pending', 'confirmed', 'preparing', 'ready_for_pickup',
                                'picked_up')
               AND o.updated_at < $1 {cursor}
             ORDER BY o.updated_at, o.id LIMIT $2
            """,
            *args,
        )
        return [order_from_row(r) for r in rows]


_CREATE_SQL = """
WITH fresh AS (
    -- The order was priced from this version of the shop and its items; if either changed
    -- since, nothing is written and the caller prices again from a fresh read.
    SELECT 1 FROM merchants
     WHERE id = $9::uuid AND menu_version = $42::bigint
       AND (SELECT count(*)
              FROM menu_items mi
              JOIN unnest($43::uuid[], $44::timestamptz[]) AS v(id, at)
                ON mi.id = v.id AND mi.updated_at = v.at) = cardinality($43::uuid[])
), claim AS (
    INSERT INTO idempotency_keys AS k (caller_id, operation, request_id, request_hash, status,
                                       response, resource_id, created_at, completed_at, expires_at)
    SELECT $1::uuid, $2, $3, $4, 'completed', $5, $6::uuid, $7::timestamptz, $7::timestamptz,
           $7::timestamptz + make_interval(secs => $8::double precision)
      FROM fresh
    ON CONFLICT (caller_id, operation, request_id) DO UPDATE
       SET request_hash = EXCLUDED.request_hash, status = 'completed',
           response = EXCLUDED.response, resource_id = EXCLUDED.resource_id,
           created_at = EXCLUDED.created_at, completed_at = EXCLUDED.completed_at,
           expires_at = EXCLUDED.expires_at
     WHERE k.expires_at < now()
    RETURNING 1
), ord AS (
    INSERT INTO orders (id, customer_id, merchant_id, status, version, delivery_address,
                        delivery_lat, delivery_lng, currency_code, subtotal_minor,
                        delivery_fee_minor, tip_minor, total_minor, delivery_pin, handoff_policy,
                        estimated_prep_seconds, estimated_delivery_at, created_at, updated_at,
                        note)
    SELECT $6::uuid, $1::uuid, $9::uuid, 'pending', 1, $10, $11, $12, $13, $14, $15, $16, $17,
           $18, $19, $20, $21, $7::timestamptz, $7::timestamptz, $22
      FROM claim
    RETURNING id
), items AS (
    INSERT INTO order_items (id, order_id, line_no, menu_item_id, name, quantity,
                             unit_price_minor, line_total_minor, note)
    SELECT i.id, ord.id, i.line_no, i.menu_item_id, i.name, i.quantity, i.unit_price,
           i.line_total, i.note
      FROM ord, unnest($23::uuid[], $24::uuid[], $25::text[], $26::int[], $27::bigint[],
                       $28::bigint[], $29::text[])
                WITH ORDINALITY AS i(id, menu_item_id, name, quantity, unit_price, line_total,
                                     note, line_no)
), opts AS (
    INSERT INTO order_item_options (order_item_id, option_group_id, option_id, group_name, name,
                                    price_delta_minor)
    SELECT x.item_id, x.group_id, x.option_id, x.group_name, x.name, x.delta
      FROM ord, unnest($30::uuid[], $31::uuid[], $32::uuid[], $33::text[], $34::text[],
                       $35::bigint[]) AS x(item_id, group_id, option_id, group_name, name, delta)
), hist AS (
    INSERT INTO order_status_history (order_id, from_status, to_status, version, actor_id,
                                      actor_role, created_at)
    SELECT id, NULL, 'pending', 1, $1::uuid, 'customer', $7::timestamptz FROM ord
), event AS (
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
    SELECT 'order', id, $36, $37, $7::timestamptz FROM ord
), notes AS (
    INSERT INTO notifications (recipient_id, order_id, type, title, body, created_at)
    SELECT n.recipient, ord.id, n.type, n.title, n.body, $7::timestamptz
      FROM ord, unnest($38::uuid[], $39::text[], $40::text[], $41::text[])
                AS n(recipient, type, title, body)
)
SELECT (SELECT count(*) FROM fresh) AS fresh, (SELECT count(*) FROM ord) AS placed
"""

# Only these columns may be stamped; the statement text is built from this fixed set.
_STAMPS = (
    "confirmed_at",
    "preparing_at",
    "ready_at",
    "assigned_at",
    "picked_up_at",
    "delivered_at",
    "cancelled_at",
)
_transition_cache: dict[tuple[str | None, bool], str] = {}


def _transition_sql(stamp: str | None, with_proof: bool) -> str:
    key = (stamp, with_proof)
    cached = _transition_cache.get(key)
    if cached is not None:
        return cached
    if stamp is not None and stamp not in _STAMPS:
        raise ValueError(f"unknown timestamp column {stamp}")
    stamp_set = f", {stamp} = $6" if stamp else ""
    # Marking an order ready teaches its merchant how long preparing takes (confirmation to
    # ready), by the rule of order_svc.domain.orders.learn_prep in numeric arithmetic. In this
    # statement it costs one row update; the merchant's menu_version ignores avg_prep_seconds
    # (migration 0011), so placements priced meanwhile stay valid.
    learns = stamp == "ready_at"
    returning = "id, version, merchant_id, confirmed_at, ready_at" if learns else "id, version"
    learn = (
        f"""
), learn AS (
    UPDATE merchants m
       SET avg_prep_seconds = round(m.avg_prep_seconds
                                    + {PREP_WEIGHT} * (p.seen - m.avg_prep_seconds)),
           prep_deviation_seconds = CASE
               WHEN m.prep_observations = 0 THEN abs(p.seen - m.avg_prep_seconds)
               ELSE round(m.prep_deviation_seconds
                          + {PREP_WEIGHT} * (abs(p.seen - m.avg_prep_seconds)
                                             - m.prep_deviation_seconds))
           END,
           prep_observations = m.prep_observations + 1
      FROM (SELECT merchant_id,
                   least(greatest(round(extract(epoch FROM ready_at - confirmed_at)),
                                  {PREP_OBSERVED_MIN_S}), {PREP_OBSERVED_MAX_S}) AS seen
              FROM upd WHERE confirmed_at IS NOT NULL) p
     WHERE m.id = p.merchant_id"""
        if learns
        else ""
    )
    proof = (
        """, proof AS (
    INSERT INTO delivery_proofs (order_id, kind, photo, content_type, lat, lng, captured_at,
                                 created_at)
    SELECT id, $26, $27, $28, $29, $30, $31, $6::timestamptz FROM upd
)"""
        if with_proof
        else ""
    )
    sql = f"""
WITH upd AS (
    UPDATE orders
       SET status = $4, version = version + 1, driver_id = $5::uuid,
           updated_at = $6::timestamptz{stamp_set},
           cancel_reason = coalesce($8, cancel_reason),
           cancelled_by_role = coalesce($9, cancelled_by_role),
           refund_minor = coalesce($10, refund_minor),
           cancellation_fee_minor = coalesce($11, cancellation_fee_minor),
           estimated_prep_seconds = coalesce($12, estimated_prep_seconds)
     WHERE id = $1::uuid AND status = $2 AND version = $3
    RETURNING {returning}
), hist AS (
    INSERT INTO order_status_history (order_id, from_status, to_status, version, actor_id,
                                      actor_role, reason, created_at)
    SELECT id, $2, $4, version, $13::uuid, $14, $7, $6::timestamptz FROM upd
), event AS (
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
    SELECT 'order', id, $15, $16, $6::timestamptz FROM upd
), notes AS (
    INSERT INTO notifications (recipient_id, order_id, type, title, body, created_at)
    SELECT n.recipient, upd.id, n.type, n.title, n.body, $6::timestamptz
      FROM upd, unnest($17::uuid[], $18::text[], $19::text[], $20::text[])
                AS n(recipient, type, title, body)
), claim AS (
    -- The caller's request id, so a retry of this very call is answered, not refused.
    INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash, status,
                                  response, resource_id, created_at, completed_at, expires_at)
    SELECT $21::uuid, $22, $23, $24, 'completed', ''::bytea, id, $6::timestamptz,
           $6::timestamptz, $6::timestamptz + interval '24 hours'
      FROM upd WHERE $23::text <> ''
    ON CONFLICT (caller_id, operation, request_id) DO NOTHING
), unload AS (
    -- A courier's load is their active orders: it drops when one leaves them (delivered,
    -- cancelled, or given to someone else) and rises when one comes. Kept here, in the one
    -- statement every change goes through, so it cannot drift.
    UPDATE drivers SET active_order_count = greatest(active_order_count - 1, 0)
      FROM upd
     WHERE drivers.id = $25::uuid
       AND ($25::uuid IS DISTINCT FROM $5::uuid OR $4 IN ('delivered', 'cancelled'))
), load AS (
    UPDATE drivers SET active_order_count = active_order_count + 1
      FROM upd
     WHERE drivers.id = $5::uuid
       AND $5::uuid IS DISTINCT FROM $25::uuid AND $4 NOT IN ('delivered', 'cancelled'){learn}
){proof}
SELECT version FROM upd
"""
    _transition_cache[key] = sql
    return sql
