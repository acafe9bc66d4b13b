"""Proto <-> domain mapping for orders, their events and their feedback."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2

from delivery.common.v1 import common_pb2
from delivery.order.v1 import merchant_pb2, order_events_pb2, order_pb2
from mesh.errors import FieldViolation, InvalidArgument
from mesh.ids import decode_page_token, encode_page_token
from order_svc.convert import timestamp
from order_svc.domain.orders import Action, Order, OrderStatus
from order_svc.domain.pricing import PricedLine
from order_svc.store.feedback import Notification, ProblemReport, Rating

STATUS_TO_PROTO = {
    OrderStatus.PENDING: common_pb2.ORDER_STATUS_PENDING,
    OrderStatus.CONFIRMED: common_pb2.ORDER_STATUS_CONFIRMED,
    OrderStatus.PREPARING: common_pb2.ORDER_STATUS_PREPARING,
    OrderStatus.READY_FOR_PICKUP: common_pb2.ORDER_STATUS_READY_FOR_PICKUP,
    OrderStatus.PICKED_UP: common_pb2.ORDER_STATUS_PICKED_UP,
    OrderStatus.DELIVERED: common_pb2.ORDER_STATUS_DELIVERED,
    OrderStatus.CANCELLED: common_pb2.ORDER_STATUS_CANCELLED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}

HANDOFF_TO_PROTO: dict[str, Any] = {
    "pin": merchant_pb2.HANDOFF_POLICY_PIN,
    "photo": merchant_pb2.HANDOFF_POLICY_PHOTO,
    "pin_or_photo": merchant_pb2.HANDOFF_POLICY_PIN_OR_PHOTO,
}

EVENT_TYPES = {
    "placed": order_events_pb2.ORDER_EVENT_TYPE_CREATED,
    Action.CONFIRM: order_events_pb2.ORDER_EVENT_TYPE_CONFIRMED,
    Action.REJECT: order_events_pb2.ORDER_EVENT_TYPE_REJECTED,
    Action.START_PREPARING: order_events_pb2.ORDER_EVENT_TYPE_PREPARING,
    Action.MARK_READY: order_events_pb2.ORDER_EVENT_TYPE_READY_FOR_PICKUP,
    Action.ASSIGN_COURIER: order_events_pb2.ORDER_EVENT_TYPE_COURIER_ASSIGNED,
    Action.REASSIGN_COURIER: order_events_pb2.ORDER_EVENT_TYPE_COURIER_UNASSIGNED,
    Action.PICK_UP: order_events_pb2.ORDER_EVENT_TYPE_PICKED_UP,
    Action.DELIVER: order_events_pb2.ORDER_EVENT_TYPE_DELIVERED,
    Action.CANCEL: order_events_pb2.ORDER_EVENT_TYPE_CANCELLED,
    "problem": order_events_pb2.ORDER_EVENT_TYPE_PROBLEM_REPORTED,
    "no_courier_found": order_events_pb2.ORDER_EVENT_TYPE_NO_COURIER_FOUND,
}

_ROLE_NAMES = {"customer", "driver", "merchant", "admin"}


def enum_name(enum: object, value: int, prefix: str) -> str:
    """``CANCEL_REASON_TOO_LATE`` -> ``too_late`` (the form stored in PostgreSQL)."""
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def enum_value(enum: object, name: str | None, prefix: str) -> Any:
    """The inverse of :func:`enum_name`; 0 (unspecified) for an unknown or empty name."""
    if not name:
        return 0
    try:
        return int(enum.Value(prefix + name.upper()))  # type: ignore[attr-defined]
    except ValueError:
        return 0


def money(amount_minor: int, currency: str) -> common_pb2.Money:
    """A Money message."""
    return common_pb2.Money(currency_code=currency, amount_minor=amount_minor)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    """A Duration for ``seconds`` (``None`` stays unset)."""
    if seconds is None:
        return None
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def lat_lng(lat: float | None, lng: float | None) -> common_pb2.LatLng | None:
    """A LatLng, or ``None`` when either coordinate is unknown."""
    if lat is None or lng is None:
        return None
    return common_pb2.LatLng(latitude=lat, longitude=lng)


def line_to_proto(line: PricedLine, currency: str) -> order_pb2.OrderItem:
    """One order line."""
    return order_pb2.OrderItem(
        menu_item_id=line.menu_item_id,
        name=line.name,
        quantity=line.quantity,
        unit_price=money(line.unit_price_minor, currency),
        options=[
            order_pb2.SelectedOption(
                option_group_id=o.option_group_id,
                option_id=o.option_id,
                name=o.name,
                price_delta=money(o.price_delta_minor, currency),
            )
            for o in line.options
        ],
        line_total=money(line.line_total_minor, currency),
        note=line.note,
    )


def order_to_proto(order: Order, lines: Sequence[PricedLine], *, show_pin: bool) -> order_pb2.Order:
    """The API view of an order; the PIN only for its customer."""
    c = order.currency_code
    proto = order_pb2.Order(
        order_id=order.id,
        customer_id=order.customer_id or "",
        merchant_id=order.merchant_id or "",
        driver_id=order.driver_id or "",
        status=STATUS_TO_PROTO[order.status],
        version=order.version,
        items=[line_to_proto(line, c) for line in lines],
        delivery_address=order.delivery_address,
        delivery_location=lat_lng(order.delivery_lat, order.delivery_lng),
        subtotal=money(order.subtotal_minor, c),
        delivery_fee=money(order.delivery_fee_minor, c),
        tip=money(order.tip_minor, c),
        total=money(order.total_minor, c),
        delivery_pin=order.delivery_pin if show_pin else "",
        handoff_policy=HANDOFF_TO_PROTO.get(order.handoff_policy, 0),
        estimated_prep_duration=duration(order.estimated_prep_seconds),
        estimated_delivery_time=timestamp(order.estimated_delivery_at),
        create_time=timestamp(order.created_at),
        confirm_time=timestamp(order.confirmed_at),
        ready_time=timestamp(order.ready_at),
        pickup_time=timestamp(order.picked_up_at),
        delivery_time=timestamp(order.delivered_at),
        cancel_time=timestamp(order.cancelled_at),
        update_time=timestamp(order.updated_at),
        note=order.note,
        merchant_location=lat_lng(order.merchant_lat, order.merchant_lng),
    )
    if order.status is OrderStatus.CANCELLED:
        proto.cancellation.CopyFrom(
            order_pb2.CancellationInfo(
                reason=enum_value(order_pb2.CancelReason, order.cancel_reason, "CANCEL_REASON_"),
                cancelled_by=_role_value(order.cancelled_by_role),
                refund=money(order.refund_minor, c),
                cancellation_fee=money(order.cancellation_fee_minor, c),
            )
        )
    return proto


def _role_value(role: str | None) -> Any:
    return enum_value(common_pb2.Role, role, "ROLE_") if role in _ROLE_NAMES else 0


def order_event(
    change: Action | str,
    order: Order,
    event_id: str,
    now: datetime,
    *,
    previous_driver_id: str | None = None,
) -> bytes:
    """The serialized ``OrderEvent`` published (through the outbox) for a change to ``order``."""
    event = order_events_pb2.OrderEvent(
        event_id=event_id,
        order_id=order.id,
        type=EVENT_TYPES[change],
        status=STATUS_TO_PROTO[order.status],
        version=order.version,
        customer_id=order.customer_id or "",
        merchant_id=order.merchant_id or "",
        driver_id=order.driver_id or "",
        merchant_location=lat_lng(order.merchant_lat, order.merchant_lng),
        delivery_location=lat_lng(order.delivery_lat, order.delivery_lng),
        estimated_prep_duration=duration(order.estimated_prep_seconds),
        occur_time=timestamp(now),
        previous_driver_id=previous_driver_id or "",
        cancel_reason=enum_value(order_pb2.CancelReason, order.cancel_reason, "CANCEL_REASON_"),
        estimated_delivery_time=timestamp(order.estimated_delivery_at),
        confirm_time=timestamp(order.confirmed_at),
    )
    return event.SerializeToString()


def problem_to_proto(report: ProblemReport) -> order_pb2.ProblemReport:
    """A problem report."""
    return order_pb2.ProblemReport(
        problem_id=report.id,
        order_id=report.order_id,
        reporter_id=report.reporter_id or "",
        reporter_role=_role_value(report.reporter_role),
        reason=enum_value(order_pb2.ProblemReason, report.reason, "PROBLEM_REASON_"),
        description=report.description,
        create_time=timestamp(report.created_at),
    )


def rating_to_proto(rating: Rating) -> order_pb2.Rating:
    """A rating."""
    return order_pb2.Rating(
        rating_id=rating.id,
        order_id=rating.order_id,
        rater_id=rating.rater_id,
        rater_role=_role_value(rating.rater_role),
        target=enum_value(order_pb2.RatingTarget, rating.target, "RATING_TARGET_"),
        target_id=rating.target_id,
        score=rating.score,
        comment=rating.comment,
        create_time=timestamp(rating.created_at),
    )


def notification_to_proto(n: Notification) -> order_pb2.Notification:
    """A notification."""
    return order_pb2.Notification(
        notification_id=str(n.id),
        order_id=n.order_id or "",
        type=enum_value(order_pb2.NotificationType, n.type, "NOTIFICATION_TYPE_"),
        title=n.title,
        body=n.body,
        create_time=timestamp(n.created_at),
        read=n.read,
    )


def encode_token(*parts: object) -> str:
    """An opaque page token for a keyset cursor."""
    raw = "\x1f".join(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)
    return encode_page_token(raw)


def decode_token(token: str, arity: int) -> list[str] | None:
    """The cursor parts of ``token`` (``None`` for an empty token); INVALID_ARGUMENT if bad."""
    if not token:
        return None
    parts = (decode_page_token(token) or "").split("\x1f")
    if len(parts) != arity:
        raise InvalidArgument(FieldViolation("page_token", "is not a token this API issued"))
    return parts
