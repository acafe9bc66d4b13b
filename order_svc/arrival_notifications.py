"""The marketplace's side of arrival detection: courier arrival events become notifications.

location_svc publishes a ``DriverArrivalEvent`` on the location event stream when a courier's
positions show them at the merchant, close to the customer, or at the customer. Each becomes one
notification for every party of the order (customer, merchant owner, courier), written once
however often the event is delivered: the event id is claimed in ``idempotency_keys`` in the
same statement that inserts the notifications, so a redelivery, a republished copy or a
concurrent consumer that claimed the same entry all find the claim taken and insert nothing.

An event about a courier who is no longer the order's courier, or that the order has moved past
(an arrival at the merchant reported after the pickup, anything after the delivery), is news
nobody should get and is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from google.protobuf.message import DecodeError
from redis.asyncio import Redis

from delivery.location.v1 import location_events_pb2
from mesh.events import Event, EventConsumer, stream_for
from mesh.ids import canonical_uuid

logger = logging.getLogger(__name__)

#: A worker for ``MeshServer.add_worker``: ``(run, stop)``.
Worker = tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]

#: The consumer group order_svc instances read the location events in.
GROUP = "order-notifications"
#: The ``idempotency_keys`` operation under which arrival event ids are claimed.
OPERATION = "location.arrival_notification"

_PRE_PICKUP = ("pending", "confirmed", "preparing", "ready_for_pickup")
_PICKED_UP = ("picked_up",)


@dataclass(frozen=True, slots=True)
class ArrivalMessage:
    """The notification one kind of arrival produces."""

    #: The notification type: the NotificationType name without its prefix, lowercased.
    type: str
    title: str
    body: str
    #: The order statuses in which the news is still current.
    statuses: tuple[str, ...]


MESSAGES: Mapping[int, ArrivalMessage] = {
    location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_MERCHANT: ArrivalMessage(
        "arrived_at_merchant",
        "Courier at the merchant",
        "The courier arrived at the merchant to pick up the order.",
        _PRE_PICKUP,
    ),
    location_events_pb2.ARRIVAL_EVENT_TYPE_APPROACHING_CUSTOMER: ArrivalMessage(
        "driver_approaching",
        "Courier nearby",
        "The courier is a few minutes away.",
        _PICKED_UP,
    ),
    location_events_pb2.ARRIVAL_EVENT_TYPE_ARRIVED_AT_CUSTOMER: ArrivalMessage(
        "arrived_at_customer",
        "Courier arrived",
        "The courier is at the delivery location.",
        _PICKED_UP,
    ),
}

# One statement: the order's parties (only while the courier is still the order's and the news
# current), the claim of the event id, and one notification per party if the claim is new.
# A duplicate waits on the claim's primary key until the first commits, then inserts nothing.
_NOTIFY = """
WITH target AS (
    SELECT o.id, o.customer_id, m.owner_user_id, o.driver_id
      FROM orders o
      LEFT JOIN merchants m ON m.id = o.merchant_id
     WHERE o.id = $1::uuid AND o.driver_id = $2::uuid AND o.status = ANY($3::text[])
), claim AS (
    INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash, status,
                                  response, resource_id, completed_at, expires_at)
    SELECT $2::uuid, $4, $5, $6, 'completed', ''::bytea, id, now(), now() + interval '7 days'
      FROM target
    ON CONFLICT (caller_id, operation, request_id) DO NOTHING
    RETURNING resource_id
)
INSERT INTO notifications (recipient_id, order_id, type, title, body, data)
SELECT DISTINCT r.recipient, c.resource_id, $7, $8, $9, $10::jsonb
  FROM claim c
 CROSS JOIN target t
 CROSS JOIN LATERAL unnest(ARRAY[t.customer_id, t.owner_user_id, t.driver_id]) AS r (recipient)
 WHERE r.recipient IS NOT NULL
"""


class ArrivalNotifier:
    """The handler of the location event stream's arrival events."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        #: Events that produced notifications.
        self.notified = 0
        #: Events dropped: unreadable, of an unknown type, stale, or already notified.
        self.skipped = 0

    async def handle(self, event: Event) -> None:
        """Writes the notifications of one arrival event, at most once per event id."""
        arrival = location_events_pb2.DriverArrivalEvent()
        try:
            arrival.ParseFromString(event.payload)
        except DecodeError:
            # No retry makes it readable; letting it fail would block the stream behind it.
            logger.error("dropping an unreadable arrival event", extra={"event_id": event.event_id})
            self.skipped += 1
            return
        message = MESSAGES.get(arrival.type)
        order_id, driver_id = canonical_uuid(arrival.order_id), canonical_uuid(arrival.driver_id)
        if message is None or order_id is None or driver_id is None:
            logger.warning(
                "dropping an arrival event that names no known type, order or courier",
                extra={"event_id": event.event_id, "event_type": event.type},
            )
            self.skipped += 1
            return
        event_id = arrival.event_id or event.event_id
        data = {
            "event_id": event_id,
            "driver_id": driver_id,
            "latitude": arrival.position.latitude,
            "longitude": arrival.position.longitude,
            "occur_time": arrival.occur_time.ToJsonString(),
        }
        status = await self._pool.execute(
            _NOTIFY,
            order_id,
            driver_id,
            list(message.statuses),
            OPERATION,
            event_id,
            hashlib.sha256(event.payload).digest(),
            message.type,
            message.title,
            message.body,
            json.dumps(data, separators=(",", ":")),
        )
        # asyncpg's status is "INSERT 0 <rows>".
        if status.rsplit(" ", 1)[-1] == "0":
            self.skipped += 1
            logger.info(
                "arrival event not notified (stale or already notified)",
                extra={"event_id": event_id, "order_id": order_id},
            )
        else:
            self.notified += 1


def build_arrival_notifier(
    pool: asyncpg.Pool,
    redis: Redis,
    consumer_name: str,
    *,
    stream: str | None = None,
    group: str = GROUP,
) -> Worker:
    """The worker that turns arrival events into notifications, as ``(run, stop)``.

    ``consumer_name`` names this instance in the consumer group; it should survive a restart
    (a pod or host name) so the instance re-reads what it had not finished.
    """
    notifier = ArrivalNotifier(pool)
    consumer = EventConsumer(
        redis, stream or stream_for("location"), group, consumer_name, notifier.handle
    )
    return consumer.run, consumer.stop
