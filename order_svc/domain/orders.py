"""The order state machine: the one definition of who may move an order from which state to which.

Courier assignment is not a state. The seed's ``driver_assigned`` status sat after
``ready_for_pickup`` yet dispatch must start while the merchant is still preparing, so an
order carries ``driver_id`` beside its status: a courier may be assigned in CONFIRMED,
PREPARING or READY_FOR_PICKUP, and picking up needs one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from mesh.auth import Principal, Role
from mesh.errors import Aborted, FailedPrecondition, NotFound, PermissionDenied


class OrderStatus(StrEnum):
    """Where an order is in its life; the strings stored in PostgreSQL."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    PREPARING = "preparing"
    READY_FOR_PICKUP = "ready_for_pickup"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


TERMINAL = frozenset({OrderStatus.DELIVERED, OrderStatus.CANCELLED})
#: States in which a courier may be assigned or taken off: before the food leaves the shop.
ASSIGNABLE = frozenset({OrderStatus.CONFIRMED, OrderStatus.PREPARING, OrderStatus.READY_FOR_PICKUP})
ACTIVE = frozenset(OrderStatus) - TERMINAL


class Action(StrEnum):
    """Everything that changes an order after it was placed."""

    CONFIRM = "confirm"
    REJECT = "reject"
    START_PREPARING = "start_preparing"
    MARK_READY = "mark_ready"
    ASSIGN_COURIER = "assign_courier"
    REASSIGN_COURIER = "reassign_courier"
    PICK_UP = "pick_up"
    DELIVER = "deliver"
    CANCEL = "cancel"


class Party(StrEnum):
    """How a caller relates to an order; a role alone is not enough."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"
    DRIVER = "driver"
    OPERATOR = "operator"  # admins and the mesh's own services
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Rule:
    """One action: the status it leads to (``None``: unchanged) and who may take it from where."""

    to: OrderStatus | None
    #: For each party, the states it may take this action from.
    allowed: Mapping[Party, frozenset[OrderStatus]]
    #: The timestamp column set in the same statement, if any.
    stamps: str | None = None


_S = OrderStatus
_EARLY = frozenset({_S.PENDING, _S.CONFIRMED, _S.PREPARING, _S.READY_FOR_PICKUP})

#: The transition table (docs/orders.md shows it for people).
RULES: Mapping[Action, Rule] = {
    Action.CONFIRM: Rule(
        _S.CONFIRMED,
        {Party.MERCHANT: frozenset({_S.PENDING}), Party.OPERATOR: frozenset({_S.PENDING})},
        "confirmed_at",
    ),
    Action.REJECT: Rule(
        _S.CANCELLED,
        {Party.MERCHANT: frozenset({_S.PENDING}), Party.OPERATOR: frozenset({_S.PENDING})},
        "cancelled_at",
    ),
    Action.START_PREPARING: Rule(
        _S.PREPARING,
        {Party.MERCHANT: frozenset({_S.CONFIRMED}), Party.OPERATOR: frozenset({_S.CONFIRMED})},
        "preparing_at",
    ),
    Action.MARK_READY: Rule(
        _S.READY_FOR_PICKUP,
        {
            Party.MERCHANT: frozenset({_S.CONFIRMED, _S.PREPARING}),
            Party.OPERATOR: frozenset({_S.CONFIRMED, _S.PREPARING}),
        },
        "ready_at",
    ),
    Action.ASSIGN_COURIER: Rule(None, {Party.OPERATOR: ASSIGNABLE}, "assigned_at"),
    Action.REASSIGN_COURIER: Rule(None, {Party.OPERATOR: ASSIGNABLE}, "assigned_at"),
    Action.PICK_UP: Rule(
        _S.PICKED_UP,
        {
            Party.DRIVER: frozenset({_S.READY_FOR_PICKUP}),
            Party.OPERATOR: frozenset({_S.READY_FOR_PICKUP}),
        },
        "picked_up_at",
    ),
    Action.DELIVER: Rule(
        _S.DELIVERED,
        {Party.DRIVER: frozenset({_S.PICKED_UP}), Party.OPERATOR: frozenset({_S.PICKED_UP})},
        "delivered_at",
    ),
    Action.CANCEL: Rule(
        _S.CANCELLED,
        {
            # Once the food has left the shop the customer reports a problem instead.
            Party.CUSTOMER: _EARLY,
            Party.MERCHANT: _EARLY,
            Party.OPERATOR: frozenset(ACTIVE),
        },
        "cancelled_at",
    ),
}


@dataclass(frozen=True, slots=True)
class OrderRef:
    """What the state machine needs to know about an order."""

    id: str
    status: OrderStatus
    version: int
    customer_id: str | None
    merchant_owner_id: str | None
    driver_id: str | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A checked change: apply it with a conditional update on ``(status, version)``."""

    action: Action
    from_status: OrderStatus
    to_status: OrderStatus
    from_version: int
    stamps: str | None
    #: The courier after the change (``None``: none).
    driver_id: str | None


def party_of(order: OrderRef, principal: Principal) -> Party:
    """How ``principal`` relates to ``order``."""
    if principal.role in (Role.ADMIN, Role.SERVICE):
        return Party.OPERATOR
    if principal.role is Role.CUSTOMER and principal.subject == order.customer_id:
        return Party.CUSTOMER
    if principal.role is Role.MERCHANT and principal.subject == order.merchant_owner_id:
        return Party.MERCHANT
    if principal.role is Role.DRIVER and principal.subject == order.driver_id:
        return Party.DRIVER
    return Party.NONE


def plan(
    order: OrderRef,
    action: Action,
    principal: Principal,
    *,
    expected_version: int = 0,
    driver_id: str | None = None,
) -> Transition:
    """Checks that ``principal`` may take ``action`` on ``order`` now and returns the change.

    Raises NOT_FOUND for a caller with no relation to the order (it must not learn the order
    exists), PERMISSION_DENIED for a party that may never take this action, ABORTED when
    ``expected_version`` is stale, and FAILED_PRECONDITION for an action the current state
    does not allow.
    """
    rule = RULES[action]
    party = party_of(order, principal)
    if party is Party.NONE:
        raise NotFound(f"order {order.id} not found", reason="ORDER_NOT_FOUND")
    allowed_from = rule.allowed.get(party)
    if allowed_from is None:
        raise PermissionDenied(
            f"a {party.value} may not {action.value.replace('_', ' ')} an order",
            reason="ACTION_NOT_ALLOWED",
            metadata={"action": action.value, "party": party.value},
        )
    if expected_version and expected_version != order.version:
        raise Aborted(
            f"order {order.id} changed: expected version {expected_version}, it is at "
            f"{order.version}; re-read it and retry",
            reason="VERSION_MISMATCH",
            metadata={"expected_version": str(expected_version), "version": str(order.version)},
        )
    if order.status not in allowed_from:
        raise FailedPrecondition(
            f"cannot {action.value.replace('_', ' ')} an order that is {order.status.value}",
            reason="ILLEGAL_TRANSITION",
            metadata={"action": action.value, "status": order.status.value},
        )
    new_driver = order.driver_id
    if action is Action.ASSIGN_COURIER:
        if not driver_id:
            raise FailedPrecondition("a courier must be named", reason="DRIVER_REQUIRED")
        if order.driver_id and order.driver_id != driver_id:
            raise FailedPrecondition(
                f"order {order.id} already has a courier",
                reason="COURIER_ALREADY_ASSIGNED",
                metadata={"driver_id": order.driver_id},
            )
        new_driver = driver_id
    elif action is Action.REASSIGN_COURIER:
        new_driver = driver_id or None
    elif action is Action.PICK_UP and not order.driver_id:
        raise FailedPrecondition(
            "no courier is assigned to this order", reason="NO_COURIER_ASSIGNED"
        )
    return Transition(
        action=action,
        from_status=order.status,
        to_status=rule.to or order.status,
        from_version=order.version,
        stamps=rule.stamps,
        driver_id=new_driver,
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """Who pays what when an order is cancelled, in minor units."""

    refund_minor: int
    cancellation_fee_minor: int


def settle_cancellation(
    *,
    status: OrderStatus,
    party: Party,
    subtotal_minor: int,
    delivery_fee_minor: int,
    tip_minor: int,
) -> Settlement:
    """The money rule of a cancellation.

    The customer gets everything back until the merchant starts preparing; after that the
    food is made and they pay for it (the subtotal), getting the delivery fee and tip back.
    A cancellation by the merchant or an operator refunds everything: it is not the
    customer's doing.
    """
    total = subtotal_minor + delivery_fee_minor + tip_minor
    if party is Party.CUSTOMER and status in (_S.PREPARING, _S.READY_FOR_PICKUP):
        return Settlement(total - subtotal_minor, subtotal_minor)
    return Settlement(total, 0)


@dataclass(frozen=True, slots=True)
class Order:
    """An order as stored (items are read separately)."""

    id: str
    customer_id: str | None
    merchant_id: str | None
    merchant_owner_id: str | None
    driver_id: str | None
    status: OrderStatus
    version: int
    delivery_address: str
    delivery_lat: float
    delivery_lng: float
    merchant_lat: float | None
    merchant_lng: float | None
    currency_code: str
    subtotal_minor: int
    delivery_fee_minor: int
    tip_minor: int
    total_minor: int
    delivery_pin: str
    handoff_policy: str
    estimated_prep_seconds: int | None
    estimated_delivery_at: datetime | None
    created_at: datetime
    updated_at: datetime
    confirmed_at: datetime | None
    ready_at: datetime | None
    picked_up_at: datetime | None
    delivered_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    cancelled_by_role: str | None
    refund_minor: int
    cancellation_fee_minor: int
    note: str

    @property
    def ref(self) -> OrderRef:
        """The state-machine view of this order."""
        return OrderRef(
            self.id,
            self.status,
            self.version,
            self.customer_id,
            self.merchant_owner_id,
            self.driver_id,
        )


#: How far one preparation moves a merchant's learned average and spread: an exponentially
#: weighted moving average in which the last ten orders carry about 90% of the weight. A
#: decimal, so PostgreSQL's numeric arithmetic (store/orders.py) gives the same integers.
PREP_WEIGHT = Decimal("0.2")
#: An observed preparation is clamped to this range first, so that one order forgotten on the
#: counter (or marked ready by mistake the moment it was confirmed) cannot wreck the average.
PREP_OBSERVED_MIN_S = 60
PREP_OBSERVED_MAX_S = 3 * 3600


@dataclass(frozen=True, slots=True)
class PrepEstimate:
    """What a merchant has learned about its preparation time, in whole seconds."""

    average_seconds: int
    #: The weighted mean of how far the average missed each order: the ETA band's width.
    deviation_seconds: int
    #: How many preparations were learned from; 0 means the average is the merchant's own
    #: estimate from when it was created.
    observations: int


def _whole(value: Decimal) -> int:
    # Half away from zero, as PostgreSQL rounds numeric.
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def observed_prep_seconds(confirmed_at: datetime, ready_at: datetime) -> int:
    """The preparation an order took, clamped to the range the learned average accepts."""
    took = ready_at - confirmed_at
    seconds = Decimal(took.days * 86_400 + took.seconds) + Decimal(took.microseconds) / 10**6
    return min(max(_whole(seconds), PREP_OBSERVED_MIN_S), PREP_OBSERVED_MAX_S)


def learn_prep(before: PrepEstimate, observed_seconds: int) -> PrepEstimate:
    """The estimate after one more preparation of ``observed_seconds`` (already clamped).

    The spread is the weighted mean of the average's miss before each order, so it is how far
    off a prediction tends to be. The first miss is taken whole: a spread blended from zero
    would claim a certainty nobody observed.
    """
    average = before.average_seconds
    miss = abs(observed_seconds - average)
    if before.observations == 0:
        deviation = miss
    else:
        deviation = _whole(
            before.deviation_seconds + PREP_WEIGHT * (miss - before.deviation_seconds)
        )
    return PrepEstimate(
        average_seconds=_whole(average + PREP_WEIGHT * (observed_seconds - average)),
        deviation_seconds=deviation,
        observations=before.observations + 1,
    )
