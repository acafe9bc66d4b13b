"""What each party is told when an order changes: one notification per party per change."""

from __future__ import annotations

from dataclasses import dataclass

from order_svc.domain.orders import Action, Order

# Type strings are the NotificationType enum names without their prefix, lowercased.
_MESSAGES: dict[Action | str, tuple[str, str, str]] = {
    "placed": ("order_placed", "New order", "A new order is waiting for confirmation."),
    Action.CONFIRM: ("order_confirmed", "Order confirmed", "The merchant confirmed the order."),
    Action.REJECT: ("order_rejected", "Order rejected", "The merchant could not take the order."),
    Action.START_PREPARING: (
        "order_preparing",
        "Preparing",
        "The merchant started preparing the order.",
    ),
    Action.MARK_READY: ("order_ready_for_pickup", "Ready for pickup", "The order is ready."),
    Action.ASSIGN_COURIER: (
        "courier_assigned",
        "Courier assigned",
        "A courier is on the way to the merchant.",
    ),
    Action.REASSIGN_COURIER: (
        "courier_unassigned",
        "Courier changed",
        "The order's courier changed.",
    ),
    Action.PICK_UP: ("order_picked_up", "Picked up", "The courier picked up the order."),
    Action.DELIVER: ("order_delivered", "Delivered", "The order was delivered."),
    Action.CANCEL: ("order_cancelled", "Order cancelled", "The order was cancelled."),
}


@dataclass(frozen=True, slots=True)
class Draft:
    """A notification for one recipient."""

    recipient_id: str
    type: str
    title: str
    body: str


def parties(order: Order, *extra: str | None) -> list[str]:
    """The order's customer, merchant owner and courier, plus ``extra``, each once."""
    seen: list[str] = []
    for who in (order.customer_id, order.merchant_owner_id, order.driver_id, *extra):
        if who and who not in seen:
            seen.append(who)
    return seen


def drafts_for(change: Action | str, order: Order, *extra: str | None) -> list[Draft]:
    """One notification for every party of ``order`` (after the change) about ``change``."""
    kind, title, body = _MESSAGES[change]
    return [Draft(who, kind, title, body) for who in parties(order, *extra)]
