"""The notification feed read in id order, exported for tracking_svc's live stream (a hot path)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from order_svc.store.feedback import Notification

_COLUMNS = """id, recipient_id::text AS recipient_id, order_id::text AS order_id, type, title, body,
       read_at IS NOT NULL AS read, created_at"""

_AFTER = f"""
SELECT {_COLUMNS}
  FROM notifications
 WHERE recipient_id = $1::uuid AND id > $2
 ORDER BY id
 LIMIT $3
"""

# The second half re-reads the newest ids at or below the cursor that were created in the last
# $4 seconds: a transaction that took its id before a higher one but committed after it.
_AFTER_WITH_OVERLAP = f"""
SELECT * FROM (
    (SELECT {_COLUMNS}
       FROM notifications
      WHERE recipient_id = $1::uuid AND id > $2
      ORDER BY id
      LIMIT $3)
    UNION ALL
    (SELECT * FROM (SELECT {_COLUMNS}
                      FROM notifications
                     WHERE recipient_id = $1::uuid AND id <= $2
                     ORDER BY id DESC
                     LIMIT $3) newest
      WHERE newest.created_at > now() - make_interval(secs => $4))
) page
ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class FeedHead:
    """Where a recipient's feed stands, read in one snapshot."""

    #: The recipient's newest notification id, 0 if they have none.
    newest_id: int
    #: The ids of the recipient's notifications created within the window asked for.
    recent_ids: frozenset[int]


async def notifications_after(
    pool: asyncpg.Pool,
    recipient_id: str,
    after_id: int,
    limit: int,
    *,
    overlap_s: float = 0.0,
) -> list[Notification]:
    """The recipient's notifications with an id above ``after_id``, oldest first, at most
    ``limit`` of them.

    With ``overlap_s`` the page also holds the recipient's notifications at or below
    ``after_id`` created in the last ``overlap_s`` seconds (at most ``limit``, the newest), in
    id order with the rest: ids are taken at INSERT and become visible at COMMIT, so a lower id
    can appear after a higher one was read. The window is measured on ``created_at`` (the
    writer's clock) against the database's clock. ``recipient_id`` must be a UUID.
    """
    if overlap_s > 0:
        rows = await pool.fetch(
            _AFTER_WITH_OVERLAP, recipient_id, after_id, limit, float(overlap_s)
        )
    else:
        rows = await pool.fetch(_AFTER, recipient_id, after_id, limit)
    return [Notification(**dict(r)) for r in rows]


async def latest_notification_id(pool: asyncpg.Pool, recipient_id: str | None = None) -> int:
    """The newest notification id of ``recipient_id``, or of the whole table when ``None``;
    0 when there is none."""
    if recipient_id is None:
        newest = await pool.fetchval("SELECT coalesce(max(id), 0) FROM notifications")
    else:
        newest = await pool.fetchval(
            "SELECT coalesce(max(id), 0) FROM notifications WHERE recipient_id = $1::uuid",
            recipient_id,
        )
    return int(newest)


async def feed_head(pool: asyncpg.Pool, recipient_id: str, within_s: float, limit: int) -> FeedHead:
    """The recipient's newest notification id and the ids (at most ``limit``, the newest) of
    their notifications created in the last ``within_s`` seconds, in one snapshot: what a
    stream that starts from now treats as already there."""
    row = await pool.fetchrow(
        """
        SELECT coalesce((SELECT max(id) FROM notifications WHERE recipient_id = $1::uuid), 0)
                 AS newest,
               ARRAY(SELECT id FROM notifications
                      WHERE recipient_id = $1::uuid
                        AND created_at > now() - make_interval(secs => $2)
                      ORDER BY id DESC LIMIT $3) AS recent
        """,
        recipient_id,
        float(within_s),
        limit,
    )
    assert row is not None
    return FeedHead(int(row["newest"]), frozenset(row["recent"]))
