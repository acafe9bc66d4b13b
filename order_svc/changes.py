"""What an order change announces, and the courier assignment other services run in their
own transaction.

matching_svc accepts an offer in one PostgreSQL transaction: the offer, the courier's load and
the order's courier succeed or fail together. The order's part is the same change
``OrderService.AssignCourier`` makes (the state machine's checks, the history row, the outbox
event and the notifications); :func:`assign_courier_in` makes it on the caller's connection.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from mesh.auth import Principal, Role
from mesh.errors import Aborted, NotFound
from order_svc.convert_orders import order_event
from order_svc.domain.notifications import Draft, drafts_for
from order_svc.domain.orders import Action, Order, Transition, plan
from order_svc.store.orders import Event, NotificationDraft, OrderStore
from order_svc.store.outbox import append_event

#: Who assigns couriers when an offer is accepted.
MATCHING = Principal("matching", Role.SERVICE)


def drafts(found: Sequence[Draft]) -> list[NotificationDraft]:
    """Notification drafts as the store inserts them."""
    return [NotificationDraft(d.recipient_id, d.type, d.title, d.body) for d in found]


def announce(
    action: Action, change: Transition, before: Order, after: Order, now: datetime
) -> tuple[Event, list[NotificationDraft]]:
    """The outbox event and the notifications of ``change`` (``before`` -> ``after``)."""
    courier_change = action in (Action.ASSIGN_COURIER, Action.REASSIGN_COURIER)
    # A reassignment to a new courier is announced as an assignment (with the previous
    # courier named); one that leaves the order without a courier as an unassignment.
    announced = (
        Action.ASSIGN_COURIER if action is Action.REASSIGN_COURIER and change.driver_id else action
    )
    event = Event(
        f"order.{announced.value}",
        order_event(
            announced,
            after,
            uuid.uuid4().hex,
            now,
            previous_driver_id=before.driver_id if courier_change else None,
        ),
    )
    return event, drafts(drafts_for(announced, after, before.driver_id))


async def assign_courier_in(
    conn: asyncpg.Connection,
    orders: OrderStore,
    order_id: str,
    driver_id: str,
    *,
    reason: str,
    now: datetime,
    actor_id: str | None = None,
    actor_role: str = "system",
) -> Order:
    """Assigns ``driver_id`` to the order within the transaction open on ``conn``; the history
    names ``actor_id`` and ``actor_role`` (the courier who accepted an offer, say).

    The order's row stays locked until that transaction ends. Raises NOT_FOUND for an unknown
    order and FAILED_PRECONDITION when it has another courier (``COURIER_ALREADY_ASSIGNED``)
    or is past the states a courier may be assigned in (``ILLEGAL_TRANSITION``). Assigning
    the courier the order already has changes nothing.
    """
    order = await orders.get(order_id, conn=conn, lock=True)
    if order is None:
        raise NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND")
    if order.driver_id == driver_id:
        return order
    change = plan(order.ref, Action.ASSIGN_COURIER, MATCHING, driver_id=driver_id)
    after = dataclasses.replace(
        order, version=order.version + 1, driver_id=driver_id, updated_at=now
    )
    event, notifications = announce(Action.ASSIGN_COURIER, change, order, after, now)
    version = await orders.apply(
        order.id,
        change,
        actor_id=actor_id,
        actor_role=actor_role,
        now=now,
        event=event,
        notifications=notifications,
        reason=reason,
        conn=conn,
        previous_driver_id=order.driver_id,
    )
    if version is None:  # pragma: no cover - the row is locked: nobody can change it meanwhile
        raise Aborted(f"order {order_id} changed meanwhile", reason="CONCURRENT_CHANGE")
    return after


async def announce_no_courier_in(
    conn: asyncpg.Connection, orders: OrderStore, order_id: str, *, now: datetime
) -> None:
    """Writes the order's ``order.no_courier_found`` event in the transaction open on ``conn``:
    dispatch ended a round without a courier and tries again later (tracking tells watchers)."""
    order = await orders.get(order_id, conn=conn)
    if order is None:
        return
    await append_event(
        conn,
        aggregate_type="order",
        aggregate_id=order.id,
        event_type="order.no_courier_found",
        payload=order_event("no_courier_found", order, uuid.uuid4().hex, now),
    )
