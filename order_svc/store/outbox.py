"""The transactional outbox: events written in the same transaction as the change they announce."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event to append to the outbox."""

    #: What kind of aggregate the event is about (``order``, ``driver``); names the stream.
    aggregate_type: str
    #: The aggregate's id (a UUID).
    aggregate_id: str
    #: The event type, e.g. ``order.confirmed``.
    event_type: str
    #: The serialized protobuf message.
    payload: bytes
    #: String headers carried along to consumers (request id, trace context).
    headers: Mapping[str, str] = field(default_factory=dict)


def _headers_json(headers: Mapping[str, str] | None) -> str:
    return json.dumps(dict(headers or {}), separators=(",", ":"))


async def append_event(
    conn: asyncpg.Connection,
    *,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Inserts one outbox row on ``conn`` and returns its id.

    The row belongs to whatever transaction ``conn`` is in: call it inside the transaction of
    the change the event announces, so that both commit or neither does. The relay publishes
    the row once it is committed.
    """
    event_id = await conn.fetchval(
        """
        INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
        VALUES ($1, $2::uuid, $3, $4, $5::jsonb)
        RETURNING id
        """,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        _headers_json(headers),
    )
    assert isinstance(event_id, int)
    return event_id


async def append_events(conn: asyncpg.Connection, events: Sequence[OutboxEvent]) -> list[int]:
    """Inserts ``events`` in one statement on ``conn``; returns their ids in the same order.

    Like :func:`append_event`, the rows are part of ``conn``'s current transaction.
    """
    if not events:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
        SELECT e.aggregate_type, e.aggregate_id, e.event_type, e.payload, e.headers
        FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bytea[], $5::jsonb[])
             WITH ORDINALITY AS e (aggregate_type, aggregate_id, event_type, payload, headers, n)
        ORDER BY e.n
        RETURNING id
        """,
        [e.aggregate_type for e in events],
        [e.aggregate_id for e in events],
        [e.event_type for e in events],
        [e.payload for e in events],
        [_headers_json(e.headers) for e in events],
    )
    # Identity values are drawn as the ordered rows are inserted, so ascending ids follow the
    # input order even though RETURNING itself promises no order.
    return sorted(row["id"] for row in rows)
