"""Proto <-> domain mapping for merchants and menus, and their page tokens."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from delivery.common.v1 import common_pb2
from delivery.order.v1 import merchant_pb2
from mesh.errors import FieldViolation, InvalidArgument
from mesh.ids import canonical_uuid, decode_page_token, encode_page_token
from order_svc.convert import timestamp
from order_svc.domain.menus import HandoffPolicy, MenuItem, Merchant
from order_svc.domain.merchants import (
    MenuItemInput,
    MoneyInput,
    NearbyQuery,
    OptionGroupInput,
    OptionInput,
)

HANDOFF_FROM_PROTO = {
    # The proto promises that an unspecified policy means PIN.
    merchant_pb2.HANDOFF_POLICY_UNSPECIFIED: HandoffPolicy.PIN,
    merchant_pb2.HANDOFF_POLICY_PIN: HandoffPolicy.PIN,
    merchant_pb2.HANDOFF_POLICY_PHOTO: HandoffPolicy.PHOTO,
    merchant_pb2.HANDOFF_POLICY_PIN_OR_PHOTO: HandoffPolicy.PIN_OR_PHOTO,
}
HANDOFF_TO_PROTO = {
    HandoffPolicy.PIN: merchant_pb2.HANDOFF_POLICY_PIN,
    HandoffPolicy.PHOTO: merchant_pb2.HANDOFF_POLICY_PHOTO,
    HandoffPolicy.PIN_OR_PHOTO: merchant_pb2.HANDOFF_POLICY_PIN_OR_PHOTO,
}


def location_of(message: Message, field: str = "location") -> tuple[float | None, float | None]:
    """The ``(latitude, longitude)`` of a LatLng field, or ``(None, None)`` if it is unset."""
    if not message.HasField(field):
        return None, None
    point: common_pb2.LatLng = getattr(message, field)
    return point.latitude, point.longitude


def seconds_of(duration: duration_pb2.Duration) -> float:
    """A Duration as seconds."""
    return duration.seconds + duration.nanos / 1e9


def request_hash(request: Message) -> bytes:
    """A digest of a request, to tell a retry from a reuse of its request_id for another body."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def merchant_to_proto(merchant: Merchant) -> merchant_pb2.Merchant:
    """The public view of a merchant."""
    return merchant_pb2.Merchant(
        merchant_id=merchant.id,
        owner_user_id=merchant.owner_user_id,
        name=merchant.name,
        description=merchant.description,
        address=merchant.address,
        location=common_pb2.LatLng(latitude=merchant.lat, longitude=merchant.lng),
        open=merchant.is_open,
        delivery_radius_meters=merchant.delivery_radius_m,
        average_prep_duration=duration_pb2.Duration(seconds=merchant.avg_prep_seconds),
        prep_observation_count=merchant.prep_observations,
        prep_deviation_duration=duration_pb2.Duration(seconds=merchant.prep_deviation_seconds),
        currency_code=merchant.currency_code,
        handoff_policy=HANDOFF_TO_PROTO[merchant.handoff_policy],
        rating_average=merchant.rating_avg or 0.0,
        rating_count=merchant.rating_count,
        create_time=timestamp(merchant.created_at),
        update_time=timestamp(merchant.updated_at),
    )


def menu_item_to_proto(item: MenuItem, currency_code: str) -> merchant_pb2.MenuItem:
    """A menu item with its prices in the merchant's currency."""

    def money(amount: int) -> common_pb2.Money:
        return common_pb2.Money(currency_code=currency_code, amount_minor=amount)

    return merchant_pb2.MenuItem(
        menu_item_id=item.id,
        merchant_id=item.merchant_id,
        name=item.name,
        description=item.description,
        price=money(item.price_minor),
        available=item.available,
        option_groups=[
            merchant_pb2.OptionGroup(
                option_group_id=group.id,
                name=group.name,
                min_select=group.min_select,
                max_select=group.max_select,
                options=[
                    merchant_pb2.Option(
                        option_id=option.id,
                        name=option.name,
                        price_delta=money(option.price_delta_minor),
                        available=option.available,
                    )
                    for option in group.options
                ],
            )
            for group in item.option_groups
        ],
        update_time=timestamp(item.updated_at),
    )


def _money_input(message: Message, field: str) -> MoneyInput | None:
    if not message.HasField(field):
        return None
    money: common_pb2.Money = getattr(message, field)
    return MoneyInput(currency_code=money.currency_code, amount_minor=money.amount_minor)


def menu_item_from_proto(item: merchant_pb2.MenuItem) -> MenuItemInput:
    """A menu item as the client sent it, for the domain to validate."""
    return MenuItemInput(
        id=item.menu_item_id,
        name=item.name,
        description=item.description,
        price=_money_input(item, "price"),
        available=item.available,
        option_groups=tuple(
            OptionGroupInput(
                id=group.option_group_id,
                name=group.name,
                min_select=group.min_select,
                max_select=group.max_select,
                options=tuple(
                    OptionInput(
                        id=option.option_id,
                        name=option.name,
                        price_delta=_money_input(option, "price_delta"),
                        available=option.available,
                    )
                    for option in group.options
                ),
            )
            for group in item.option_groups
        ),
    )


def _bad_token(description: str = "is not a page token of this query") -> InvalidArgument:
    return InvalidArgument(FieldViolation("page_token", description), reason="INVALID_PAGE_TOKEN")


def _encode(payload: dict[str, Any]) -> str:
    return encode_page_token(json.dumps(payload, separators=(",", ":")))


def _decode(token: str) -> dict[str, Any]:
    raw = decode_page_token(token)
    try:
        payload = json.loads(raw) if raw is not None else None
    except ValueError:
        raise _bad_token("is malformed") from None
    if not isinstance(payload, dict):
        raise _bad_token("is malformed")
    return payload


def merchant_page_token(query: NearbyQuery, distance_m: float, merchant_id: str) -> str:
    """The token of the page after the merchant at ``distance_m`` with ``merchant_id``."""
    return _encode({"q": query.fingerprint(), "d": distance_m, "id": merchant_id})


def merchant_cursor(query: NearbyQuery, token: str) -> tuple[float, str] | None:
    """The ``(distance, id)`` cursor in ``token`` (``None`` for the first page)."""
    if not token:
        return None
    payload = _decode(token)
    distance, merchant_id = payload.get("d"), payload.get("id")
    if payload.get("q") != query.fingerprint():
        raise _bad_token()
    if not isinstance(distance, int | float) or not math.isfinite(distance):
        raise _bad_token("is malformed")
    key = canonical_uuid(merchant_id) if isinstance(merchant_id, str) else None
    if key is None:
        raise _bad_token("is malformed")
    return float(distance), key


def _menu_query(merchant_id: str, available_only: bool) -> str:
    return f"{merchant_id}|{available_only}"


def menu_page_token(merchant_id: str, available_only: bool, last: MenuItem) -> str:
    """The token of the menu page after ``last``."""
    return _encode({"q": _menu_query(merchant_id, available_only), "n": last.name, "id": last.id})


def menu_cursor(merchant_id: str, available_only: bool, token: str) -> tuple[str, str] | None:
    """The ``(name, id)`` cursor in ``token`` (``None`` for the first page)."""
    if not token:
        return None
    payload = _decode(token)
    name, item_id = payload.get("n"), payload.get("id")
    if payload.get("q") != _menu_query(merchant_id, available_only):
        raise _bad_token()
    key = canonical_uuid(item_id) if isinstance(item_id, str) else None
    if not isinstance(name, str) or key is None:
        raise _bad_token("is malformed")
    return name, key
